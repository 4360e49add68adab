package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/types"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Config configures a Compiler.
type Config struct {
	// Cluster is the local cluster's name: the cluster the policies come
	// from, whose identities are the subjects of entries. Required.
	Cluster string

	// NodeScoped limits the subjects (the LocalIdentity of every entry, and
	// the enforcement set) to the identities marked with SetNodeIdentity:
	// an agent marks the identities of the pods on its node, so its maps
	// hold only what its tunnel program can meet. False makes every
	// identity of Cluster a subject.
	NodeScoped bool
}

// Compiler turns MeshNetworkPolicies and the known identities into the
// desired contents of the datapath's policy and enforcement maps, and keeps
// them current as either changes, doing only the work a change touches.
//
// Feed it with UpsertIdentity/DeleteIdentity (every identity of every
// cluster, local and remote), UpsertPolicy/DeletePolicy (the local
// cluster's policies) and, when NodeScoped, SetNodeIdentity. Read the
// result with Snapshot (everything, to reconcile) or TakeChanges (what
// changed since, to apply). Safe for concurrent use.
type Compiler struct {
	cluster    string
	nodeScoped bool

	mu         sync.Mutex // guards the fields below
	index      *selectorIndex
	table      *entryTable
	onNode     map[protocol.NumericIdentity]struct{}
	policies   map[types.NamespacedName]*policy
	byRuleID   map[uint32]*policy
	nextRuleID uint32
}

// policy is a policy in force.
type policy struct {
	ref     types.NamespacedName
	ruleID  uint32
	spec    policySpec
	subject *selector // nil: selects nothing
	// subjects are the members of subject that get entries (all of them,
	// or those on this node): what a new peer pairs with.
	subjects map[protocol.NumericIdentity]*identity
	rules    []*rule
}

// rule is one compiled rule of a policy in force.
type rule struct {
	p       *policy
	dir     maps.Direction
	peers   []*selector
	anyPeer bool
	ports   []portProto
}

// New returns an empty Compiler.
func New(cfg Config) (*Compiler, error) {
	if err := protocol.ValidateClusterName(cfg.Cluster); err != nil {
		return nil, fmt.Errorf("policy compiler: %w", err)
	}
	return &Compiler{
		cluster:    cfg.Cluster,
		nodeScoped: cfg.NodeScoped,
		index:      newSelectorIndex(),
		table:      newEntryTable(),
		onNode:     make(map[protocol.NumericIdentity]struct{}),
		policies:   make(map[types.NamespacedName]*policy),
		byRuleID:   make(map[uint32]*policy),
		nextRuleID: 1,
	}, nil
}

// UpsertIdentity adds an identity of any cluster, or replaces the labels of
// a known one. Its cluster is its io.cilium.k8s.policy.cluster label.
func (c *Compiler) UpsertIdentity(id protocol.NumericIdentity, labels protocol.Labels) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if old, ok := c.index.idents[id]; ok {
		if old.labels.Equal(labels) {
			return
		}
		c.removeIdentity(old)
	}
	ident, joined := c.index.addIdentity(id, slices.Clone(labels), c.cluster)
	for _, s := range joined {
		c.identityJoined(s, ident, +1)
	}
}

// DeleteIdentity forgets an identity; an unknown one is ignored.
func (c *Compiler) DeleteIdentity(id protocol.NumericIdentity) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ident, ok := c.index.idents[id]; ok {
		c.removeIdentity(ident)
	}
}

func (c *Compiler) removeIdentity(ident *identity) {
	for s := range ident.in {
		c.identityJoined(s, ident, -1)
	}
	c.index.removeIdentity(ident)
}

// identityJoined emits the entries of ident joining (+1) or leaving (-1)
// selector s: as a subject of the policies s is the endpointSelector of,
// or as a peer of the rules that name s.
func (c *Compiler) identityJoined(s *selector, ident *identity, delta int32) {
	if c.subject(ident) {
		for p := range s.subjectOf {
			c.subjectChanged(p, ident, delta)
		}
	}
	if !ident.local {
		for r := range s.peerOf {
			c.peerChanged(r, ident, delta)
		}
	}
}

// SetNodeIdentity marks whether pods of identity id run on this node; it
// matters only with Config.NodeScoped. The mark is independent of whether
// the identity is known yet.
func (c *Compiler) SetNodeIdentity(id protocol.NumericIdentity, onNode bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, was := c.onNode[id]; was == onNode {
		return
	}
	ident, known := c.index.idents[id]
	before := known && c.subject(ident)
	if onNode {
		c.onNode[id] = struct{}{}
	} else {
		delete(c.onNode, id)
	}
	if !known || c.subject(ident) == before {
		return
	}
	delta := int32(1)
	if before {
		delta = -1
	}
	for s := range ident.in {
		for p := range s.subjectOf {
			c.subjectChanged(p, ident, delta)
		}
	}
}

// subject reports whether ident gets entries as a local endpoint.
func (c *Compiler) subject(ident *identity) bool {
	if !ident.local {
		return false
	}
	if c.nodeScoped {
		_, ok := c.onNode[ident.id]
		return ok
	}
	return true
}

// subjectChanged adds (+1) or removes (-1) the entries and enforcement of
// local identity x as an endpoint p selects.
func (c *Compiler) subjectChanged(p *policy, x *identity, delta int32) {
	if delta > 0 {
		p.subjects[x.id] = x
	} else {
		delete(p.subjects, x.id)
	}
	c.table.addEnforce(x.id, p.spec.ingress, p.spec.egress, delta)
	for _, r := range p.rules {
		if r.anyPeer {
			c.emit(r, x.id, 0, delta)
		}
		for _, s := range r.peers {
			for _, y := range s.members {
				if !y.local {
					c.emit(r, x.id, y.id, delta)
				}
			}
		}
	}
}

// peerChanged adds or removes the entries of remote identity y as a peer
// of rule r.
func (c *Compiler) peerChanged(r *rule, y *identity, delta int32) {
	for _, x := range r.p.subjects {
		c.emit(r, x.id, y.id, delta)
	}
}

func (c *Compiler) emit(r *rule, local, remote protocol.NumericIdentity, delta int32) {
	for _, q := range r.ports {
		k := maps.PolicyEntryKey{Direction: r.dir, LocalIdentity: local, RemoteIdentity: remote, Port: q.port, Protocol: q.proto}
		if delta > 0 {
			c.table.inc(k, r.p.ruleID)
		} else {
			c.table.dec(k, r.p.ruleID)
		}
	}
}

// UpsertPolicy compiles p, replacing the policy of the same namespace and
// name, and returns nil when p is valid or an *InvalidPolicyError naming
// every problem. An invalid policy allows nothing, but still puts the
// endpoints its (valid) endpointSelector selects into default deny in the
// directions it has rules for; see the package doc. p is not retained.
func (c *Compiler) UpsertPolicy(p *v1alpha1.MeshNetworkPolicy) error {
	spec := compilePolicy(p, c.cluster)
	ref := types.NamespacedName{Namespace: p.Namespace, Name: p.Name}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.policies[ref]
	if old != nil && old.spec.equalEffect(spec) {
		old.spec = spec
		return errOrNil(spec.err)
	}
	var ruleID uint32
	if old != nil {
		ruleID = old.ruleID
		c.removePolicy(old)
	} else {
		ruleID = c.allocRuleID()
	}
	np := &policy{ref: ref, ruleID: ruleID, spec: spec, subjects: make(map[protocol.NumericIdentity]*identity)}
	c.policies[ref] = np
	c.byRuleID[ruleID] = np
	if spec.subject != nil {
		np.subject = c.index.acquire(*spec.subject)
		np.subject.subjectOf[np] = struct{}{}
	}
	for i := range spec.rules {
		rs := &spec.rules[i]
		r := &rule{p: np, dir: rs.dir, anyPeer: rs.anyPeer, ports: rs.ports}
		for _, ps := range rs.peers {
			s := c.index.acquire(ps)
			s.peerOf[r] = struct{}{}
			r.peers = append(r.peers, s)
		}
		np.rules = append(np.rules, r)
	}
	if np.subject != nil {
		for _, x := range np.subject.members {
			if c.subject(x) {
				c.subjectChanged(np, x, +1)
			}
		}
	}
	return errOrNil(spec.err)
}

// errOrNil keeps a nil *InvalidPolicyError from becoming a non-nil error.
func errOrNil(err *InvalidPolicyError) error {
	if err == nil {
		return nil
	}
	return err
}

// DeletePolicy removes a policy; an unknown one is ignored.
func (c *Compiler) DeletePolicy(namespace, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p, ok := c.policies[types.NamespacedName{Namespace: namespace, Name: name}]; ok {
		c.removePolicy(p)
	}
}

func (c *Compiler) removePolicy(p *policy) {
	if p.subject != nil {
		for _, x := range p.subjects {
			c.subjectChanged(p, x, -1)
		}
		delete(p.subject.subjectOf, p)
		c.index.release(p.subject)
	}
	for _, r := range p.rules {
		for _, s := range r.peers {
			delete(s.peerOf, r)
			c.index.release(s)
		}
	}
	delete(c.policies, p.ref)
	delete(c.byRuleID, p.ruleID)
}

// allocRuleID returns a rule ID no policy holds. IDs count up, so a flow
// event that outlives its policy is not pinned on a newer one until the
// 32-bit counter wraps.
func (c *Compiler) allocRuleID() uint32 {
	for {
		id := c.nextRuleID
		c.nextRuleID++
		if id == 0 {
			continue // 0 names no rule
		}
		if _, used := c.byRuleID[id]; !used {
			return id
		}
	}
}

// PolicyForRule returns the policy whose entries carry ruleID, for naming
// the policy in a flow event.
func (c *Compiler) PolicyForRule(ruleID uint32) (types.NamespacedName, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.byRuleID[ruleID]
	if !ok {
		return types.NamespacedName{}, false
	}
	return p.ref, true
}

// PoliciesEnforcing returns the policies that put local identity id into
// default deny in direction dir (those that select it as a subject and
// have rules for dir), sorted: for naming the policies behind a drop no
// entry allowed (a flow event with reason policy-no-match and rule ID 0).
func (c *Compiler) PoliciesEnforcing(id protocol.NumericIdentity, dir maps.Direction) []types.NamespacedName {
	c.mu.Lock()
	defer c.mu.Unlock()
	ident, ok := c.index.idents[id]
	if !ok {
		return nil
	}
	var out []types.NamespacedName
	for s := range ident.in {
		for p := range s.subjectOf {
			if _, subject := p.subjects[id]; !subject {
				continue // not in force for it on this node
			}
			if dir == maps.Ingress && p.spec.ingress || dir == maps.Egress && p.spec.egress {
				out = append(out, p.ref)
			}
		}
	}
	slices.SortFunc(out, func(a, b types.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// TakeChanges returns what changed in the desired maps since the last
// TakeChanges or Snapshot, and starts collecting anew. The first call
// returns everything.
func (c *Compiler) TakeChanges() Changes {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.table.take()
}

// Snapshot returns the whole desired policy map and enforcement map, for a
// full reconcile (maps.Policy.Reconcile, maps.Enforcement.Reconcile), and
// starts collecting changes anew from this state.
func (c *Compiler) Snapshot() (map[maps.PolicyEntryKey]maps.PolicyEntry, map[protocol.NumericIdentity]maps.Enforced) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.table.snapshot()
}

// Stats are counts for metrics and status.
type Stats struct {
	Identities         int
	Policies           int
	InvalidPolicies    int
	Selectors          int
	Entries            int
	EnforcedIdentities int
}

// Stats returns the current counts.
func (c *Compiler) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := Stats{
		Identities:         len(c.index.idents),
		Policies:           len(c.policies),
		Selectors:          len(c.index.selectors),
		Entries:            c.table.live,
		EnforcedIdentities: len(c.table.enforce),
	}
	for _, p := range c.policies {
		if p.spec.err != nil {
			st.InvalidPolicies++
		}
	}
	return st
}

// Selection is what a policy selects now, for explaining a policy to a
// user and for tests.
type Selection struct {
	RuleID uint32
	// Err is the policy's *InvalidPolicyError, or nil.
	Err error
	// Endpoints are the identities its endpointSelector matches.
	Endpoints []protocol.NumericIdentity
	// Rules are the rules that can allow something, in spec order
	// (ingress first); an invalid policy has none.
	Rules []RuleSelection
}

// RuleSelection is what one rule selects.
type RuleSelection struct {
	Direction maps.Direction
	// Peers are the identities the rule's peer selectors match. Those of
	// the local cluster are listed but get no entries: their traffic
	// never crosses the mesh.
	Peers []protocol.NumericIdentity
	// AnyPeer: the rule lists ports but no peers, so it allows every
	// peer on them.
	AnyPeer bool
	// Ports are the (port, protocol) pairs; port 0 is every port.
	Ports []PortProtocol
}

// PortProtocol is a port and protocol a rule allows.
type PortProtocol struct {
	Port     uint16
	Protocol maps.Protocol
}

// Selection returns what the policy namespace/name selects.
func (c *Compiler) Selection(namespace, name string) (Selection, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.policies[types.NamespacedName{Namespace: namespace, Name: name}]
	if !ok {
		return Selection{}, false
	}
	sel := Selection{RuleID: p.ruleID, Err: errOrNil(p.spec.err)}
	if p.subject != nil {
		sel.Endpoints = sortedIDs(p.subject.members)
	}
	for _, r := range p.rules {
		rs := RuleSelection{Direction: r.dir, AnyPeer: r.anyPeer}
		peers := make(map[protocol.NumericIdentity]*identity)
		for _, s := range r.peers {
			for id, ident := range s.members {
				peers[id] = ident
			}
		}
		rs.Peers = sortedIDs(peers)
		for _, q := range r.ports {
			rs.Ports = append(rs.Ports, PortProtocol{Port: q.port, Protocol: q.proto})
		}
		sel.Rules = append(sel.Rules, rs)
	}
	return sel, true
}

func sortedIDs(m map[protocol.NumericIdentity]*identity) []protocol.NumericIdentity {
	ids := make([]protocol.NumericIdentity, 0, len(m))
	for id := range m {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// IsInvalid reports whether err is (or wraps) an *InvalidPolicyError.
func IsInvalid(err error) bool {
	var ie *InvalidPolicyError
	return errors.As(err, &ie)
}
