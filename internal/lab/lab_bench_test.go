package lab_test

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/labtest"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// BenchmarkUp measures `lab up` of the default lab (2 clusters of 2 nodes)
// with the control-plane binaries cached, until every node (and, with the
// mesh, every isthmus-apiserver and agent) is ready; `lab down` is
// reported separately. The first kube build is not part of it: run
// `ISTHMUS_CACHE_DIR=$(mktemp -d) isthmus lab up` for the cold start.
func BenchmarkUp(b *testing.B) {
	privileged.Require(b)
	bins := labtest.Build(b)
	b.Run("mesh=false", func(b *testing.B) { benchmarkUp(b, bins, false) })
	if bins.MeshAPIServer != "" {
		b.Run("mesh=true", func(b *testing.B) { benchmarkUp(b, bins, true) })
	}
}

func benchmarkUp(b *testing.B, bins labtest.Binaries, mesh bool) {
	root := b.TempDir()
	ctx := context.Background()
	var down time.Duration
	for b.Loop() {
		cfg := lab.Config{StateRoot: root, Isthmus: bins.Isthmus, Progress: io.Discard}
		if mesh {
			cfg.MeshAPIServer, cfg.Agent = bins.MeshAPIServer, bins.Agent
		}
		cfg.Name = labtest.Name()
		l, err := lab.Up(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		begin := time.Now()
		if err := l.Down(ctx); err != nil {
			b.Fatal(err)
		}
		down += time.Since(begin)
		b.StartTimer()
	}
	b.ReportMetric(down.Seconds()/float64(b.N), "s-down/op")
}
