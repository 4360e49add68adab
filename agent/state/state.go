package state

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Config configures a State.
type Config struct {
	// LocalCluster and LocalClusterID name the cluster this node is in.
	// Required.
	LocalCluster   string
	LocalClusterID uint32
	// MaxConnectedClusters decides where an identity carries its cluster
	// ID. Required.
	MaxConnectedClusters uint32
	// NodeName is this node's name in the local cluster; its pods and
	// addresses are marked as local to the node. Empty means unknown.
	NodeName string
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
}

// State is the merged mesh view. Safe for concurrent use.
type State struct {
	cfg Config

	mu sync.RWMutex // guards the fields below
	// clusters by name; order lists them local first, then by name, which
	// is the preference order when two clusters claim one prefix.
	clusters       map[string]*clusterState
	order          []*clusterState
	localServices  map[ServiceName]*LocalService
	localEndpoints map[ServiceName]map[string]protocol.PortConfiguration
	ipcacheSubs    []*Changes[netip.Prefix]
	serviceSubs    []*Changes[ServiceName]
	identitySubs   []*Changes[protocol.NumericIdentity]
	nodeSubs       []*Changes[NodeName]
	syncSubs       []chan struct{}
}

// New returns an empty State.
func New(cfg Config) (*State, error) {
	if err := protocol.ValidateClusterName(cfg.LocalCluster); err != nil {
		return nil, err
	}
	if err := protocol.ValidateClusterID(cfg.LocalClusterID, cfg.MaxConnectedClusters); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &State{
		cfg:            cfg,
		clusters:       make(map[string]*clusterState),
		localServices:  make(map[ServiceName]*LocalService),
		localEndpoints: make(map[ServiceName]map[string]protocol.PortConfiguration),
	}, nil
}

// ServiceName is a service's namespace and name.
type ServiceName struct{ Namespace, Name string }

func (n ServiceName) String() string { return n.Namespace + "/" + n.Name }

// NodeName is a node's cluster and name.
type NodeName struct{ Cluster, Name string }

func (n NodeName) String() string { return n.Cluster + "/" + n.Name }

// clusterState is one cluster's export.
type clusterState struct {
	name  string
	local bool

	identities map[protocol.NumericIdentity]protocol.Labels
	ipcache    map[netip.Prefix]podEntry
	// maskedKeys maps the key address of an ipcache entry whose prefix is
	// not the address's host prefix to that prefix; rare, so kept apart.
	maskedKeys map[netip.Addr]netip.Prefix
	nodes      map[string]*protocol.Node
	nodeIPs    map[netip.Prefix]string // node address as host prefix -> node name
	services   map[ServiceName]*protocol.ClusterService

	synced     map[protocol.Kind]bool
	everSynced bool
	lastChange time.Time
}

type podEntry struct {
	id     protocol.NumericIdentity
	hostIP netip.Addr
}

func newClusterState(name string, local bool) *clusterState {
	return &clusterState{
		name:       name,
		local:      local,
		identities: make(map[protocol.NumericIdentity]protocol.Labels),
		ipcache:    make(map[netip.Prefix]podEntry),
		maskedKeys: make(map[netip.Addr]netip.Prefix),
		nodes:      make(map[string]*protocol.Node),
		nodeIPs:    make(map[netip.Prefix]string),
		services:   make(map[ServiceName]*protocol.ClusterService),
		synced:     make(map[protocol.Kind]bool),
	}
}

// Cluster returns the writer of cluster name's state, creating the cluster
// if needed. The writer implements remotecluster.Handler.
func (s *State) Cluster(name string) *ClusterWriter {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clusterLocked(name)
	return &ClusterWriter{s: s, name: name}
}

func (s *State) clusterLocked(name string) *clusterState {
	if cs := s.clusters[name]; cs != nil {
		return cs
	}
	cs := newClusterState(name, name == s.cfg.LocalCluster)
	s.clusters[name] = cs
	s.order = append(s.order, cs)
	slices.SortFunc(s.order, func(a, b *clusterState) int {
		if a.local != b.local {
			if a.local {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	return cs
}

// RemoveCluster withdraws everything cluster name exported. Its writers
// become no-ops until Cluster is called for the name again.
func (s *State) RemoveCluster(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := s.clusters[name]
	if cs == nil {
		return
	}
	now := s.cfg.Now()
	delete(s.clusters, name)
	s.order = slices.DeleteFunc(s.order, func(c *clusterState) bool { return c == cs })
	for p := range cs.ipcache {
		s.ipcacheChangedLocked(p, now)
	}
	for p := range cs.nodeIPs {
		s.ipcacheChangedLocked(p, now)
	}
	for id := range cs.identities {
		for _, c := range s.identitySubs {
			c.add(id, now)
		}
	}
	for n := range cs.nodes {
		for _, c := range s.nodeSubs {
			c.add(NodeName{name, n}, now)
		}
	}
	for nn := range cs.services {
		s.serviceChangedLocked(nn, now)
	}
	s.syncChangedLocked()
}

// ClusterNames returns the clusters with state, local first.
func (s *State) ClusterNames() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, len(s.order))
	for i, cs := range s.order {
		out[i] = cs.name
	}
	return out
}

// ClusterSummary counts one cluster's state.
type ClusterSummary struct {
	Cluster    string
	Identities int
	IPCache    int
	Nodes      int
	Services   int
	// EverSynced is true once every kind was synced at least once.
	EverSynced bool
	LastChange time.Time
}

// Summary returns the counts of cluster name.
func (s *State) Summary(name string) (ClusterSummary, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	cs := s.clusters[name]
	if cs == nil {
		return ClusterSummary{}, false
	}
	return ClusterSummary{
		Cluster: name, Identities: len(cs.identities), IPCache: len(cs.ipcache),
		Nodes: len(cs.nodes), Services: len(cs.services), EverSynced: cs.everSynced, LastChange: cs.lastChange,
	}, true
}

// EverSynced reports whether cluster name synced every kind at least once.
func (s *State) EverSynced(name string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	cs := s.clusters[name]
	return cs != nil && cs.everSynced
}

// SyncChanged returns a channel that receives a value whenever a cluster
// first completes its sync or is removed. Capacity 1: wake-ups coalesce.
func (s *State) SyncChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan struct{}, 1)
	s.syncSubs = append(s.syncSubs, c)
	return c
}

func (s *State) syncChangedLocked() {
	for _, c := range s.syncSubs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// SubscribeIPCache returns a change set of ipcache prefixes.
func (s *State) SubscribeIPCache() *Changes[netip.Prefix] {
	c := newChanges[netip.Prefix]()
	s.mu.Lock()
	s.ipcacheSubs = append(s.ipcacheSubs, c)
	s.mu.Unlock()
	return c
}

// SubscribeServices returns a change set of global service names.
func (s *State) SubscribeServices() *Changes[ServiceName] {
	c := newChanges[ServiceName]()
	s.mu.Lock()
	s.serviceSubs = append(s.serviceSubs, c)
	s.mu.Unlock()
	return c
}

// SubscribeIdentities returns a change set of identities.
func (s *State) SubscribeIdentities() *Changes[protocol.NumericIdentity] {
	c := newChanges[protocol.NumericIdentity]()
	s.mu.Lock()
	s.identitySubs = append(s.identitySubs, c)
	s.mu.Unlock()
	return c
}

// SubscribeNodes returns a change set of nodes.
func (s *State) SubscribeNodes() *Changes[NodeName] {
	c := newChanges[NodeName]()
	s.mu.Lock()
	s.nodeSubs = append(s.nodeSubs, c)
	s.mu.Unlock()
	return c
}

func (s *State) ipcacheChangedLocked(p netip.Prefix, now time.Time) {
	for _, c := range s.ipcacheSubs {
		c.add(p, now)
	}
}

func (s *State) serviceChangedLocked(nn ServiceName, now time.Time) {
	for _, c := range s.serviceSubs {
		c.add(nn, now)
	}
}
