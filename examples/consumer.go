// Uploads (or downloads) through an UploadGrant's Secret mounted at /grant.
// Standard library only: go run consumer.go [/grant] < file
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	dir := "/grant"
	if len(os.Args) > 1 {
		dir = os.Args[1]
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return strings.TrimSpace(string(b))
	}
	method, url := read("method"), read("url")
	var headers map[string]string
	if err := json.Unmarshal([]byte(read("headers")), &headers); err != nil {
		fmt.Fprintln(os.Stderr, "headers:", err)
		os.Exit(1)
	}
	var body io.Reader
	if method == http.MethodPut {
		body = os.Stdin
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	if n, ok := headers["content-length"]; ok {
		fmt.Sscan(n, &req.ContentLength) // Go sends Content-Length from this field
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		msg, _ := io.ReadAll(resp.Body)
		fmt.Fprintf(os.Stderr, "%s: %s\n", resp.Status, msg)
		os.Exit(1)
	}
	io.Copy(os.Stdout, resp.Body)
}
