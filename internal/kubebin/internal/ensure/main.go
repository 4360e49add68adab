// Command ensure builds and caches the pinned Kubernetes control-plane
// binaries (kubebin.Ensure) and prints where they are. `make kube` runs it.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/kubebin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	bins, err := kubebin.Ensure(ctx, kubebin.Options{Progress: os.Stderr})
	if err != nil {
		fmt.Fprintln(os.Stderr, "kube:", err)
		os.Exit(1)
	}
	fmt.Printf("Kubernetes %s control-plane binaries in %s (ready in %s)\n", bins.Version, bins.Dir, time.Since(start).Round(10*time.Microsecond))
}
