package remotecluster

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

func TestNumKinds(t *testing.T) {
	if len(protocol.Kinds) != numKinds {
		t.Fatalf("numKinds is %d but protocol has %d kinds", numKinds, len(protocol.Kinds))
	}
}

func TestBackoffGrowsWithJitterAndResets(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: 2 * time.Second}
	var got []time.Duration
	for range 8 {
		got = append(got, b.next())
	}
	ceil := 100 * time.Millisecond
	for i, d := range got {
		if d < ceil/2 || d > ceil {
			t.Errorf("wait %d = %s, want in [%s, %s]", i, d, ceil/2, ceil)
		}
		ceil = min(2*ceil, 2*time.Second)
	}
	b.reset()
	if d := b.next(); d > 100*time.Millisecond {
		t.Errorf("after reset: %s", d)
	}
	// Jitter: many agents do not all pick the same wait.
	seen := map[time.Duration]bool{}
	for range 20 {
		b := backoff{min: time.Second, max: time.Minute}
		seen[b.next()] = true
	}
	if len(seen) < 10 {
		t.Errorf("only %d distinct first waits out of 20", len(seen))
	}
}

func TestClusterIDs(t *testing.T) {
	ids := NewClusterIDs("home", 1)
	if err := ids.Claim("home", 1); err != nil {
		t.Errorf("local cluster claiming its own ID: %v", err)
	}
	if err := ids.Claim("home", 2); !errors.Is(err, ErrDuplicateClusterID) || !strings.Contains(err.Error(), "--cluster-id") {
		t.Errorf("local cluster with another ID: %v", err)
	}
	if err := ids.Claim("a", 1); !errors.Is(err, ErrDuplicateClusterID) || !strings.Contains(err.Error(), `the local cluster "home"`) {
		t.Errorf("remote with the local ID: %v", err)
	}
	if err := ids.Claim("a", 2); err != nil {
		t.Fatal(err)
	}
	if err := ids.Claim("b", 2); !errors.Is(err, ErrDuplicateClusterID) || !strings.Contains(err.Error(), `cluster "a"`) {
		t.Errorf("duplicate: %v", err)
	}
	// A cluster that changes its ID gives up the old one.
	if err := ids.Claim("a", 3); err != nil {
		t.Fatal(err)
	}
	if err := ids.Claim("b", 2); err != nil {
		t.Errorf("freed ID: %v", err)
	}
	ids.Release("a")
	if _, ok := ids.Holder(3); ok {
		t.Error("released ID still held")
	}
	ids.Release("home")
	if h, _ := ids.Holder(1); h != "home" {
		t.Error("local cluster lost its ID")
	}
}

func TestCheckEndpoints(t *testing.T) {
	for ep, ok := range map[string]bool{
		"https://127.0.0.1:2379":        true,
		"https://[fd00::1]:2379":        true,
		"https://mesh.example.com:2379": true,
		"https://https://127.0.0.1:1":   false,
		"http://127.0.0.1:2379":         false,
		"127.0.0.1:2379":                false,
		"https://127.0.0.1":             false,
		"https://127.0.0.1:2379/x":      false,
	} {
		err := checkEndpoints(meshconfig.ClusterEntry{Cluster: "c", Endpoints: []string{ep}})
		if (err == nil) != ok {
			t.Errorf("%s: %v", ep, err)
		}
	}
}
