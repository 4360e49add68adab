package meshops

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

func TestDirections(t *testing.T) {
	for _, tc := range []struct {
		mode ConnectionMode
		n    int
		want []direction
	}{
		{Bidirectional, 2, []direction{{0, 1}, {1, 0}}},
		{Bidirectional, 3, []direction{{0, 1}, {1, 0}, {0, 2}, {2, 0}}},
		{Unicast, 3, []direction{{0, 1}, {0, 2}}},
		{FullMesh, 3, []direction{{0, 1}, {0, 2}, {1, 0}, {1, 2}, {2, 0}, {2, 1}}},
		{FullMesh, 2, []direction{{0, 1}, {1, 0}}},
	} {
		if got := directions(tc.mode, tc.n); !slices.Equal(got, tc.want) {
			t.Errorf("directions(%s, %d) = %v, want %v", tc.mode, tc.n, got, tc.want)
		}
	}
}

func TestParseConnectionMode(t *testing.T) {
	for in, want := range map[string]ConnectionMode{"": Bidirectional, "bidirectional": Bidirectional, "unicast": Unicast, "mesh": FullMesh} {
		if got, err := ParseConnectionMode(in); err != nil || got != want {
			t.Errorf("ParseConnectionMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseConnectionMode("star"); err == nil || !strings.Contains(err.Error(), `"star"`) {
		t.Errorf("ParseConnectionMode(star) = %v", err)
	}
}

// testState is a cluster enabled with name, id and pod CIDRs, with a CA of
// its own.
func testState(t *testing.T, context, name string, id, max uint32, endpoints []string, cidrs ...string) *clusterState {
	t.Helper()
	ca, err := certs.NewCA("test-"+name, 0)
	if err != nil {
		t.Fatal(err)
	}
	s := &clusterState{
		c:       &Cluster{context: context},
		config:  MeshConfig{ClusterName: name, ClusterID: id, MaxConnectedClusters: max, MeshEndpoints: endpoints},
		ca:      ca,
		entries: map[string]meshconfig.ClusterEntry{},
	}
	for _, c := range cidrs {
		s.podCIDRs = append(s.podCIDRs, netip.MustParsePrefix(c))
	}
	return s
}

func TestCheckCompatible(t *testing.T) {
	ep := []string{"https://10.0.0.1:2379"}
	a := func() *clusterState { return testState(t, "ctx-a", "a", 1, 255, ep, "10.1.0.0/24", "10.1.1.0/24") }
	b := func() *clusterState { return testState(t, "ctx-b", "b", 2, 255, ep, "10.2.0.0/24") }
	for _, tc := range []struct {
		name   string
		states func() []*clusterState
		mode   ConnectionMode
		// want lists substrings, one per expected problem.
		want []string
	}{
		{name: "compatible", states: func() []*clusterState { return []*clusterState{a(), b()} }, mode: Bidirectional},
		{name: "not enabled", mode: Bidirectional, states: func() []*clusterState {
			nb := &clusterState{c: &Cluster{context: "ctx-b"}, notEnabled: errors.New(`context "ctx-b" is not enabled`)}
			return []*clusterState{a(), nb}
		}, want: []string{`"ctx-b" is not enabled`}},
		{name: "same cluster twice", mode: Bidirectional, states: func() []*clusterState {
			x, y := a(), a()
			y.c = &Cluster{context: "ctx-a2"}
			y.ca = x.ca
			return []*clusterState{x, y}
		}, want: []string{`contexts "ctx-a" and "ctx-a2" are the same cluster`}},
		{name: "duplicate name", mode: Bidirectional, states: func() []*clusterState {
			x := b()
			x.config.ClusterName = "a"
			return []*clusterState{a(), x}
		}, want: []string{`both enabled as cluster "a"`}},
		{name: "duplicate ID", mode: Bidirectional, states: func() []*clusterState {
			x := b()
			x.config.ClusterID = 1
			return []*clusterState{a(), x}
		}, want: []string{`both have cluster ID 1`}},
		{name: "max connected differs", mode: Bidirectional, states: func() []*clusterState {
			x := b()
			x.config.MaxConnectedClusters = 511
			return []*clusterState{a(), x}
		}, want: []string{`max-connected-clusters 255 but cluster "b" (context "ctx-b") has 511`}},
		{name: "overlapping pod CIDRs", mode: Bidirectional, states: func() []*clusterState {
			return []*clusterState{a(), testState(t, "ctx-b", "b", 2, 255, ep, "10.1.0.0/16")}
		}, want: []string{`pod CIDR 10.1.0.0/24 of cluster "a" (context "ctx-a") overlaps pod CIDR 10.1.0.0/16 of cluster "b"`}},
		{name: "destinations overlap each other", mode: Unicast, states: func() []*clusterState {
			// a reads both b and c, so b and c must not overlap either.
			return []*clusterState{a(), b(), testState(t, "ctx-c", "c", 3, 255, ep, "10.2.0.128/25")}
		}, want: []string{`pod CIDR 10.2.0.0/24 of cluster "b"`}},
		{name: "target without endpoint", mode: Unicast, states: func() []*clusterState {
			x := b()
			x.config.MeshEndpoints = nil
			return []*clusterState{a(), x}
		}, want: []string{`cluster "b" (context "ctx-b") publishes no mesh endpoint`}},
		{name: "reader without endpoint is fine in unicast", mode: Unicast, states: func() []*clusterState {
			x := a()
			x.config.MeshEndpoints = nil
			return []*clusterState{x, b()}
		}},
		{name: "reader already reads another cluster of that name", mode: Bidirectional, states: func() []*clusterState {
			x, y := a(), b()
			other, _ := certs.NewCA("other", 0)
			x.entries["b"] = meshconfig.ClusterEntry{Cluster: "b", CA: other.CertPEM()}
			return []*clusterState{x, y}
		}, want: []string{`already reads a cluster named "b" whose CA is not the mesh CA`}},
		{name: "every problem at once", mode: Bidirectional, states: func() []*clusterState {
			x := b()
			x.config.ClusterID = 1
			x.config.MaxConnectedClusters = 511
			x.config.MeshEndpoints = nil
			x.podCIDRs = []netip.Prefix{netip.MustParsePrefix("10.1.1.0/24")}
			return []*clusterState{a(), x}
		}, want: []string{"both have cluster ID 1", "max-connected-clusters", "overlaps", "publishes no mesh endpoint"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			states := tc.states()
			problems, _ := checkCompatible(states, directions(tc.mode, len(states)))
			if len(problems) != len(tc.want) {
				t.Fatalf("got %d problems, want %d: %v", len(problems), len(tc.want), problems)
			}
			for i, w := range tc.want {
				if !strings.Contains(problems[i].Error(), w) {
					t.Errorf("problem %d = %q, want it to contain %q", i, problems[i], w)
				}
			}
		})
	}
}

func TestCheckCompatibleNotes(t *testing.T) {
	a := testState(t, "ctx-a", "a", 1, 255, []string{"https://a:1"})
	b := testState(t, "ctx-b", "b", 2, 255, []string{"https://b:1"}, "10.0.0.0/24")
	b.podCIDRErr = errors.New("forbidden")
	problems, notes := checkCompatible([]*clusterState{a, b}, directions(Bidirectional, 2))
	if len(problems) != 0 || len(notes) != 2 {
		t.Fatalf("problems %v, notes %v; want no problems and two notes", problems, notes)
	}
	if !strings.Contains(notes[0], `no Node of cluster "a"`) || !strings.Contains(notes[1], "forbidden") {
		t.Errorf("notes = %q", notes)
	}
}

func TestCheckErrorMessage(t *testing.T) {
	one := (&CheckError{Problems: []error{errors.New("x is wrong")}}).Error()
	if one != "x is wrong\nNothing was changed." {
		t.Errorf("one problem: %q", one)
	}
	two := &CheckError{Problems: []error{errors.New("x"), ErrUnknownContext}}
	if got := two.Error(); got != "2 problems:\n  - x\n  - unknown context\nNothing was changed." {
		t.Errorf("two problems: %q", got)
	}
	if !errors.Is(two, ErrUnknownContext) {
		t.Error("errors.Is does not see a problem")
	}
}

func TestCheckCompatibleAgainstConnectedClusters(t *testing.T) {
	ep := []string{"https://10.0.0.1:2379"}
	a := testState(t, "ctx-a", "a", 1, 255, ep)
	b := testState(t, "ctx-b", "b", 2, 255, ep)
	// a's agents already read c, with ID 2; and b itself (a re-run).
	a.remoteIDs = map[string]uint32{"c": 2, "b": 2}
	problems, _ := checkCompatible([]*clusterState{a, b}, directions(Unicast, 2))
	if len(problems) != 1 || !strings.Contains(problems[0].Error(), `already reads cluster "c", whose cluster ID is also 2`) {
		t.Fatalf("problems %v", problems)
	}
	// b does not read a in unicast mode, so b's other remotes do not matter.
	a.remoteIDs = nil
	b.remoteIDs = map[string]uint32{"d": 1}
	if problems, _ := checkCompatible([]*clusterState{a, b}, directions(Unicast, 2)); len(problems) != 0 {
		t.Errorf("unicast: %v", problems)
	}
	if problems, _ := checkCompatible([]*clusterState{a, b}, directions(Bidirectional, 2)); len(problems) != 1 || !strings.Contains(problems[0].Error(), `cluster "b" (context "ctx-b") already reads cluster "d"`) {
		t.Errorf("bidirectional: %v", problems)
	}
}
