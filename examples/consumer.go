// Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.
// Standard library only:
//
//	go run consumer.go [/grant] < file   # a PUT grant: uploads stdin
//	go run consumer.go [/grant] > file   # a GET grant: writes the object
//	go run consumer.go [/grant] [NAME] < file
//	                                     # a POST grant: uploads stdin as the
//	                                     # form's file NAME (upload.bin)
//	go run consumer.go [/grant] < file   # a multipart grant: uploads stdin in
//	                                     # parts, then completes the upload
//
// Reads the files at the moment of use, so a renewed URL is picked up
// without a restart.
//
// The rule every example consumer follows: send every header in `headers`
// exactly, except the one the HTTP client derives from the body itself,
// `content-length`. net/http takes it from the body (Request.ContentLength,
// set by NewRequest for a bytes.Reader) and ignores it in Request.Header, so
// it is not set by hand; the body must have exactly that many bytes (a grant
// that pins contentLength signed it), checked before anything is sent.
//
// A POST grant (a form, as a browser would send it) has no headers to send:
// `url` is the form's action and `fields` a JSON object of form fields. They
// are sent as multipart/form-data, every field in the order given (read with
// a json.Decoder: a Go map would lose the order), then the file last as
// `file` (S3 ignores anything after it). S3 puts NAME in place of
// `${filename}` in the key field. S3 answers 204, or the grant's
// successActionStatus; anything else is an error, reported with S3's code.
//
// A multipart grant (its Secret has `uploadId`) has no `url`: `parts` is JSON
// {"count", "partSize", "url", "signatures"}, and part N's URL is `url` with
// {partNumber} replaced by N and {signature} by signatures[N-1]. Each part is
// a plain PUT of partSize bytes (the last may be smaller) with no extra
// headers; S3 answers with the part's ETag. Parts are read from stdin one at
// a time (never the whole file), and a failed part is tried again up to 3
// times in all, with `parts` read again. completeUrl takes a POST of the
// XML list of part numbers and ETags; S3 can answer it 200 with an <Error>
// in the body, so the body is checked too. `parts` is read again for every
// part, so a renewal during a long upload is picked up.
package main

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "consumer: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	dir := "/grant"
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			fail("%v", err)
		}
		return strings.TrimSpace(string(b))
	}
	if _, err := os.Stat(filepath.Join(dir, "uploadId")); err == nil {
		uploadParts(read, os.Stdin)
		fmt.Fprintln(os.Stderr, "uploaded")
		return
	}
	if read("method") == http.MethodPost {
		name := "upload.bin"
		if len(os.Args) > 2 {
			name = os.Args[2]
		}
		body, err := io.ReadAll(os.Stdin)
		if err != nil {
			fail("reading stdin: %v", err)
		}
		post(read, name, body)
		fmt.Fprintln(os.Stderr, "uploaded")
		return
	}
	var body []byte
	if read("method") == http.MethodPut {
		var err error
		if body, err = io.ReadAll(os.Stdin); err != nil {
			fail("reading stdin: %v", err)
		}
	}
	// Read at the moment of use: the kubelet replaces the files on renewal.
	method, url := read("method"), read("url")
	var headers map[string]string
	if err := json.Unmarshal([]byte(read("headers")), &headers); err != nil {
		fail("headers: %v", err)
	}
	// The client derives Content-Length from the body: check it, do not set it.
	if pinned, ok := headers["content-length"]; ok {
		if n, err := strconv.Atoi(pinned); err != nil || n != len(body) {
			fail("the body is %d bytes but the grant signed content-length %s; nothing was sent", len(body), pinned)
		}
		delete(headers, "content-length")
	}
	var reader io.Reader
	if method == http.MethodPut {
		reader = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, url, reader)
	if err != nil {
		fail("%v", err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fail("%v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(resp.Body)
		fail("%s: %s", resp.Status, msg)
	}
	if method == http.MethodPut {
		fmt.Fprintln(os.Stderr, "uploaded")
		return
	}
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		fail("%v", err)
	}
}

// post sends the form: every field of `fields` in order, then the file.
func post(read func(string) string, name string, body []byte) {
	url := read("url")
	fields, err := orderedFields(read("fields"))
	if err != nil {
		fail("fields: %v", err)
	}
	var form bytes.Buffer
	w := multipart.NewWriter(&form)
	expected := http.StatusNoContent
	for _, f := range fields {
		if err := w.WriteField(f[0], f[1]); err != nil {
			fail("%v", err)
		}
		if f[0] == "success_action_status" {
			if expected, err = strconv.Atoi(f[1]); err != nil {
				fail("success_action_status %q: %v", f[1], err)
			}
		}
	}
	file, err := w.CreateFormFile("file", name)
	if err != nil {
		fail("%v", err)
	}
	if _, err := file.Write(body); err != nil {
		fail("%v", err)
	}
	if err := w.Close(); err != nil {
		fail("%v", err)
	}
	resp, err := http.Post(url, w.FormDataContentType(), &form)
	if err != nil {
		fail("%v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != expected {
		answer, _ := io.ReadAll(resp.Body)
		var s3 struct{ Code, Message string }
		if xml.Unmarshal(answer, &s3) != nil || s3.Code == "" {
			fail("%s: %s", resp.Status, answer)
		}
		fail("%d %s: %s", resp.StatusCode, s3.Code, s3.Message)
	}
}

// partURLs is the Secret's `parts` key.
type partURLs struct {
	Count      int      `json:"count"`
	PartSize   int64    `json:"partSize"`
	URL        string   `json:"url"`
	Signatures []string `json:"signatures"`
}

// attempts is how many times a part is tried before the upload is given up.
const attempts = 3

// putPart sends part n, tried again with `parts` read again (fresh
// signatures) when it fails; it returns the part's ETag.
func putPart(read func(string) string, n int, chunk []byte) string {
	for attempt := 1; ; attempt++ {
		var parts partURLs
		if err := json.Unmarshal([]byte(read("parts")), &parts); err != nil {
			fail("parts: %v", err)
		}
		url := strings.NewReplacer("{partNumber}", strconv.Itoa(n), "{signature}", parts.Signatures[n-1]).Replace(parts.URL)
		req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(chunk))
		if err != nil {
			fail("%v", err)
		}
		var problem string
		if resp, err := http.DefaultClient.Do(req); err != nil {
			problem = err.Error()
		} else {
			answer, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return resp.Header.Get("ETag")
			}
			problem = fmt.Sprintf("%s: %s", resp.Status, answer)
		}
		if attempt == attempts {
			fail("part %d: %s; gave up after %d attempts", n, problem, attempts)
		}
		fmt.Fprintf(os.Stderr, "consumer: part %d: %s; retrying (attempt %d of %d)\n", n, problem, attempt+1, attempts)
		time.Sleep(time.Duration(attempt) * time.Second)
	}
}

// uploadParts sends stdin in parts of partSize bytes, then completes the
// upload with the parts' ETags.
func uploadParts(read func(string) string, in io.Reader) {
	var etags []string
	for {
		var parts partURLs
		if err := json.Unmarshal([]byte(read("parts")), &parts); err != nil {
			fail("parts: %v", err)
		}
		chunk, err := io.ReadAll(io.LimitReader(in, parts.PartSize))
		if err != nil {
			fail("reading stdin: %v", err)
		}
		if len(chunk) == 0 && len(etags) > 0 {
			break
		}
		n := len(etags) + 1
		if n > parts.Count || n > len(parts.Signatures) {
			fail("the file has more than %d parts of %d bytes; the upload was not completed", parts.Count, parts.PartSize)
		}
		etags = append(etags, putPart(read, n, chunk))
	}
	var body strings.Builder
	body.WriteString("<CompleteMultipartUpload>")
	for i, etag := range etags {
		var escaped bytes.Buffer
		if err := xml.EscapeText(&escaped, []byte(etag)); err != nil {
			fail("%v", err)
		}
		fmt.Fprintf(&body, "<Part><PartNumber>%d</PartNumber><ETag>%s</ETag></Part>", i+1, escaped.String())
	}
	body.WriteString("</CompleteMultipartUpload>")
	resp, err := http.Post(read("completeUrl"), "application/xml", strings.NewReader(body.String()))
	if err != nil {
		fail("complete: %v", err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(resp.Body)
	// A 200 can still carry an error: S3 reports some failures in the body.
	if resp.StatusCode != http.StatusOK || bytes.Contains(answer, []byte("<Error>")) {
		fail("complete: %s: %s", resp.Status, answer)
	}
}

// orderedFields reads a JSON object of strings keeping its order.
func orderedFields(text string) ([][2]string, error) {
	dec := json.NewDecoder(strings.NewReader(text))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("not a JSON object")
	}
	var fields [][2]string
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		var value string
		if err := dec.Decode(&value); err != nil {
			return nil, fmt.Errorf("%v: %v", t, err)
		}
		fields = append(fields, [2]string{t.(string), value})
	}
	return fields, nil
}
