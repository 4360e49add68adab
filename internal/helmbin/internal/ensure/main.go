// Command ensure builds and caches the pinned helm binary (helmbin.Ensure)
// and prints its path, alone on stdout, for the Makefile.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/isthmus-mesh/isthmus/internal/helmbin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	path, err := helmbin.Ensure(ctx, helmbin.Options{Progress: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helm:", err)
		os.Exit(1)
	}
	fmt.Println(path)
}
