// Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.
// Standard library only:
//
//	go run consumer.go [/grant] < file   # a PUT grant: uploads stdin
//	go run consumer.go [/grant] > file   # a GET grant: writes the object
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
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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
