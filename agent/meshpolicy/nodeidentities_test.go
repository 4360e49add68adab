package meshpolicy

import (
	"maps"
	"net/netip"
	"testing"

	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// TestNodeIdentities checks the count of this node's pods per identity: an
// identity is marked on its first pod here and unmarked after its last;
// pods of other nodes and clusters, and node addresses, never count.
func TestNodeIdentities(t *testing.T) {
	n := newNodeIdentities("c1")
	marks := map[protocol.NumericIdentity]bool{}
	var events int
	mark := func(id protocol.NumericIdentity, on bool) {
		events++
		marks[id] = on
	}
	p := func(i byte) netip.Prefix { return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, 0, i}), 32) }
	here := func(id protocol.NumericIdentity) state.IPCacheEntry {
		return state.IPCacheEntry{Identity: id, Cluster: "c1", LocalNode: true}
	}
	steps := []struct {
		name   string
		prefix netip.Prefix
		e      state.IPCacheEntry
		ok     bool
		want   map[protocol.NumericIdentity]bool
		events int
	}{
		{"first pod of 300", p(1), here(300), true, map[protocol.NumericIdentity]bool{300: true}, 1},
		{"second pod of 300", p(2), here(300), true, map[protocol.NumericIdentity]bool{300: true}, 1},
		{"same entry again", p(2), here(300), true, map[protocol.NumericIdentity]bool{300: true}, 1},
		{"pod of another node", p(3), state.IPCacheEntry{Identity: 301, Cluster: "c1"}, true, map[protocol.NumericIdentity]bool{300: true}, 1},
		{"pod of another cluster", p(4), state.IPCacheEntry{Identity: 302, Cluster: "c2", LocalNode: true}, true, map[protocol.NumericIdentity]bool{300: true}, 1},
		{"this node's address", p(5), state.IPCacheEntry{Identity: protocol.IdentityHost, Cluster: "c1", Node: true, LocalNode: true}, true, map[protocol.NumericIdentity]bool{300: true}, 1},
		{"first pod changes identity", p(1), here(303), true, map[protocol.NumericIdentity]bool{300: true, 303: true}, 2},
		{"last pod of 300 goes", p(2), state.IPCacheEntry{}, false, map[protocol.NumericIdentity]bool{300: false, 303: true}, 3},
		{"pod of 303 moves away", p(1), state.IPCacheEntry{Identity: 303, Cluster: "c1"}, true, map[protocol.NumericIdentity]bool{300: false, 303: false}, 4},
	}
	for _, s := range steps {
		n.update(s.prefix, s.e, s.ok, mark)
		if !maps.Equal(marks, s.want) || events != s.events {
			t.Fatalf("%s: marks %v after %d events, want %v after %d", s.name, marks, events, s.want, s.events)
		}
	}
	if n.identities() != 0 || len(n.byPrefix) != 0 {
		t.Errorf("left %d identities, %d prefixes", n.identities(), len(n.byPrefix))
	}
}
