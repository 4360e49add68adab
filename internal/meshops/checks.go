package meshops

import (
	"fmt"
	"net/netip"
	"strings"
)

// ConnectionMode says which of the clusters given to Connect or Disconnect
// read which.
type ConnectionMode string

const (
	// Bidirectional: the source and each destination read each other.
	Bidirectional ConnectionMode = "bidirectional"
	// Unicast: the source reads each destination; they do not read it.
	Unicast ConnectionMode = "unicast"
	// FullMesh: every cluster given reads every other.
	FullMesh ConnectionMode = "mesh"
)

// ConnectionModes lists the modes, for help and completion.
var ConnectionModes = []ConnectionMode{Bidirectional, Unicast, FullMesh}

// ParseConnectionMode returns the mode named s; empty means Bidirectional.
func ParseConnectionMode(s string) (ConnectionMode, error) {
	if s == "" {
		return Bidirectional, nil
	}
	for _, m := range ConnectionModes {
		if string(m) == s {
			return m, nil
		}
	}
	return "", fmt.Errorf("connection mode %q is not one of bidirectional, unicast, mesh", s)
}

// direction is "clusters[reader] reads clusters[target]".
type direction struct{ reader, target int }

// directions lists the connections mode makes among n clusters, the first
// being the source.
func directions(mode ConnectionMode, n int) []direction {
	var out []direction
	switch mode {
	case Bidirectional:
		for i := 1; i < n; i++ {
			out = append(out, direction{0, i}, direction{i, 0})
		}
	case Unicast:
		for i := 1; i < n; i++ {
			out = append(out, direction{0, i})
		}
	case FullMesh:
		for i := range n {
			for j := range n {
				if i != j {
					out = append(out, direction{i, j})
				}
			}
		}
	}
	return out
}

// checkCompatible returns every reason the clusters cannot be connected
// as dirs says, and notes on what could not be checked. The clusters must
// be enabled, be distinct clusters with distinct names and IDs, share
// maxConnectedClusters and have disjoint pod CIDRs, since one agent reads
// them all; every cluster that is read must publish a mesh endpoint; and a
// reader must not already read another cluster under the same name.
func checkCompatible(states []*clusterState, dirs []direction) (problems []error, notes []string) {
	var ok []*clusterState
	for _, s := range states {
		if s.notEnabled != nil {
			problems = append(problems, s.notEnabled)
			continue
		}
		ok = append(ok, s)
	}
	for i, a := range ok {
		for _, b := range ok[i+1:] {
			if bytesEqual(a.ca.CertPEM(), b.ca.CertPEM()) {
				problems = append(problems, fmt.Errorf("contexts %q and %q are the same cluster (%q, with the same mesh CA); a cluster cannot be connected to itself", a.c.context, b.c.context, a.config.ClusterName))
				continue
			}
			if a.config.ClusterName == b.config.ClusterName {
				problems = append(problems, fmt.Errorf("contexts %q and %q are both enabled as cluster %q: every cluster of a mesh needs its own name; enable one of them under another name (delete its ConfigMap isthmus-system/isthmus-config first)", a.c.context, b.c.context, a.config.ClusterName))
			}
			if a.config.ClusterID == b.config.ClusterID {
				problems = append(problems, fmt.Errorf("%s and %s both have cluster ID %d: every cluster of a mesh needs its own ID, since identities carry it; enable one of them with another --cluster-id (delete its ConfigMap isthmus-system/isthmus-config first)", a.label(), b.label(), a.config.ClusterID))
			}
			if a.config.MaxConnectedClusters != b.config.MaxConnectedClusters {
				problems = append(problems, fmt.Errorf("%s has max-connected-clusters %d but %s has %d: every cluster of a mesh must use the same value", a.label(), a.config.MaxConnectedClusters, b.label(), b.config.MaxConnectedClusters))
			}
			if pa, pb, overlap := firstOverlap(a.podCIDRs, b.podCIDRs); overlap {
				problems = append(problems, fmt.Errorf("pod CIDR %s of %s overlaps pod CIDR %s of %s: cross-cluster routes would be ambiguous, so clusters of a mesh need disjoint pod CIDRs", pa, a.label(), pb, b.label()))
			}
		}
	}
	for _, s := range ok {
		if s.podCIDRErr != nil {
			notes = append(notes, fmt.Sprintf("pod CIDRs of %s not checked for overlap: %v", s.label(), s.podCIDRErr))
		} else if len(s.podCIDRs) == 0 {
			notes = append(notes, fmt.Sprintf("no Node of %s has a pod CIDR in spec.podCIDRs, so overlap with it was not checked", s.label()))
		}
	}
	needsEndpoint := map[int]bool{}
	for _, d := range dirs {
		r, t := states[d.reader], states[d.target]
		if r.notEnabled != nil || t.notEnabled != nil || r.config.ClusterName == t.config.ClusterName {
			continue
		}
		needsEndpoint[d.target] = true
		for other, id := range r.remoteIDs {
			if id == t.config.ClusterID && other != t.config.ClusterName && other != r.config.ClusterName {
				problems = append(problems, fmt.Errorf("%s already reads cluster %q, whose cluster ID is also %d (as its agents report): every cluster of a mesh needs its own ID; enable %q with another --cluster-id (delete its ConfigMap isthmus-system/isthmus-config first)",
					r.label(), other, id, t.config.ClusterName))
			}
		}
		if e, found := r.entries[t.config.ClusterName]; found && !bytesEqual(e.CA, t.ca.CertPEM()) {
			problems = append(problems, fmt.Errorf("%s already reads a cluster named %q whose CA is not the mesh CA of %s: either that is another cluster of the same name, or %q got a new CA. If %s is right, run `isthmus disconnect --context %s --destination-context %s --connection-mode unicast` first",
				r.label(), t.config.ClusterName, t.c, t.config.ClusterName, t.c, r.c.context, t.c.context))
		}
	}
	for i, s := range states {
		if needsEndpoint[i] && len(s.config.MeshEndpoints) == 0 {
			problems = append(problems, fmt.Errorf("%s publishes no mesh endpoint, so other clusters cannot reach it: run `isthmus enable --context %s --cluster-name %s --cluster-id %d --mesh-endpoint https://<address>:<port>` with an address the other clusters reach, or start its mesh apiserver with --advertise-endpoint",
				s.label(), s.c.context, s.config.ClusterName, s.config.ClusterID))
		}
	}
	return problems, notes
}

// firstOverlap returns the first pair of overlapping prefixes.
func firstOverlap(a, b []netip.Prefix) (netip.Prefix, netip.Prefix, bool) {
	for _, p := range a {
		for _, q := range b {
			if p.Overlaps(q) {
				return p, q, true
			}
		}
	}
	return netip.Prefix{}, netip.Prefix{}, false
}

// CheckError is the error of a connect or disconnect refused before
// anything was written: every problem found.
type CheckError struct {
	Problems []error
}

func (e *CheckError) Error() string {
	if len(e.Problems) == 1 {
		return e.Problems[0].Error() + "\nNothing was changed."
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d problems:", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p.Error())
	}
	b.WriteString("\nNothing was changed.")
	return b.String()
}

// Unwrap returns the problems, so errors.Is and As see each.
func (e *CheckError) Unwrap() []error { return e.Problems }
