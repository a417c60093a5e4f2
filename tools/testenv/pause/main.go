// Command pause is the only program in the test environment's image, built
// locally so that nothing is ever pulled from a registry. containerd runs it
// as every pod's sandbox ("pause") container, and tests run it with
// arguments:
//
//	pause                 wait for SIGTERM or SIGINT, then exit 0
//	pause watch FILE...   print "FILE: CONTENT" at start and whenever a file
//	                      changes (for tests reading mounted Secrets through
//	                      `kubectl logs`), until SIGTERM or SIGINT
//	pause CHECK... [serve PORT]
//	                      run each CHECK once, in order, printing one line
//	                      each, then wait for SIGTERM or SIGINT; with serve,
//	                      answer HTTP on PORT (all addresses) meanwhile with
//	                      the host name, which is the pod's name. A CHECK is
//	                      get URL CAFILE   "get URL: STATUS" or "get URL: error: …";
//	                                       CAFILE verifies https ("-": none)
//	                      dial HOST:PORT   "dial HOST:PORT: connected" or
//	                                       "dial HOST:PORT: error: …" (TCP)
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const usage = "usage: pause [watch FILE... | [get URL CAFILE | dial HOST:PORT]... [serve PORT]]"

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	args := os.Args[1:]
	if len(args) >= 2 && args[0] == "watch" {
		go watch(args[1:])
		<-stop
		return
	}
	for len(args) > 0 {
		switch {
		case args[0] == "get" && len(args) >= 3:
			fmt.Printf("get %s: %s\n", args[1], get(args[1], args[2]))
			args = args[3:]
		case args[0] == "dial" && len(args) >= 2:
			fmt.Printf("dial %s: %s\n", args[1], dial(args[1]))
			args = args[2:]
		case args[0] == "serve" && len(args) == 2:
			go serve(args[1])
			args = nil
		default:
			fmt.Fprintln(os.Stderr, usage)
			os.Exit(2)
		}
	}
	<-stop
}

func watch(files []string) {
	last := make(map[string]string)
	for {
		for _, f := range files {
			b, err := os.ReadFile(f)
			content := string(b)
			if err != nil {
				content = "error: " + err.Error()
			}
			if prev, seen := last[f]; !seen || prev != content {
				last[f] = content
				fmt.Printf("%s: %s\n", f, content)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// get fetches url once, verifying https against caFile's certificates only.
func get(url, caFile string) string {
	tlsConfig := &tls.Config{RootCAs: x509.NewCertPool()}
	if caFile != "-" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return "error: " + err.Error()
		}
		if !tlsConfig.RootCAs.AppendCertsFromPEM(pem) {
			return "error: no certificate in " + caFile
		}
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: tlsConfig, Proxy: nil},
	}
	resp, err := client.Get(url)
	if err != nil {
		return "error: " + err.Error()
	}
	resp.Body.Close()
	return resp.Status
}

func dial(addr string) string {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "error: " + err.Error()
	}
	conn.Close()
	return "connected"
}

func serve(port string) {
	name, _ := os.Hostname()
	err := http.ListenAndServe(":"+port, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, name)
	}))
	fmt.Fprintf(os.Stderr, "serve %s: %v\n", port, err)
	os.Exit(1)
}
