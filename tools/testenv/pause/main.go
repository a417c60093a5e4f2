// Command pause is the only program in the test environment's image, built
// locally so that nothing is ever pulled from a registry. containerd runs it
// as every pod's sandbox ("pause") container, and tests run it with
// arguments:
//
//	pause                 wait for SIGTERM or SIGINT, then exit 0
//	pause watch FILE...   print "FILE: CONTENT" at start and whenever a file
//	                      changes (for tests reading mounted Secrets through
//	                      `kubectl logs`), until SIGTERM or SIGINT
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if len(os.Args) >= 3 && os.Args[1] == "watch" {
		go watch(os.Args[2:])
	} else if len(os.Args) > 1 {
		fmt.Fprintf(os.Stderr, "usage: %s [watch FILE...]\n", os.Args[0])
		os.Exit(2)
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
