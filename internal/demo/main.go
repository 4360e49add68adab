package demo

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

// Main runs the demo with command-line args and returns the exit code.
func Main(args []string) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	bin := fs.String("bin", "bin", "directory holding isthmus, isthmus-apiserver and isthmus-agent")
	requests := fs.Int("requests", 10, "how many requests to send")
	labName := fs.String("lab", "", "name of the lab to run on or bring up (empty: the default lab)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	abs, err := filepath.Abs(*bin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, Config{Bin: abs, Out: os.Stdout, Requests: *requests, Lab: *labName}); err != nil {
		fmt.Fprintf(os.Stderr, "\ndemo: %v\n", err)
		return 1
	}
	return 0
}
