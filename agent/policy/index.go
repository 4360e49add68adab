package policy

import (
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// identity is a known security identity.
type identity struct {
	id     protocol.NumericIdentity
	labels protocol.Labels
	// set is the labels as key -> value, the form selectors match.
	set map[string]string
	// local: the identity belongs to the compiler's cluster. Only local
	// identities are subjects (LocalIdentity of entries); only the others
	// are peers, because local traffic never crosses the mesh tunnel.
	local bool
	// in holds the selectors whose members include this identity.
	in map[*selector]struct{}
}

type labelKV struct{ key, value string }

// selector is a selectorSpec shared by every policy and rule that uses it,
// with the identities it currently matches.
type selector struct {
	spec selectorSpec
	// anchor is the In requirement the selector is indexed by: only an
	// identity holding one of its values can match. nil when the selector
	// has no In requirement; such selectors are tried on every identity.
	anchor *requirement
	// members are the identities the selector matches.
	members map[protocol.NumericIdentity]*identity
	// subjectOf: policies whose endpointSelector this is.
	subjectOf map[*policy]struct{}
	// peerOf: rules that name this selector as a peer.
	peerOf map[*rule]struct{}
}

func (s *selector) unused() bool { return len(s.subjectOf) == 0 && len(s.peerOf) == 0 }

// selectorIndex holds the identities and the selectors in use, indexed both
// ways so that a new identity finds its selectors, and a new selector its
// identities, without scanning everything. Not safe for concurrent use;
// the Compiler serialises access.
type selectorIndex struct {
	idents map[protocol.NumericIdentity]*identity
	// postings: label -> identities holding it.
	postings map[labelKV]map[protocol.NumericIdentity]*identity
	// selectors by canonical key.
	selectors map[string]*selector
	// anchored: label -> selectors anchored on it.
	anchored map[labelKV]map[*selector]struct{}
	// unanchored selectors are tried on every new identity.
	unanchored map[*selector]struct{}
}

func newSelectorIndex() *selectorIndex {
	return &selectorIndex{
		idents:     make(map[protocol.NumericIdentity]*identity),
		postings:   make(map[labelKV]map[protocol.NumericIdentity]*identity),
		selectors:  make(map[string]*selector),
		anchored:   make(map[labelKV]map[*selector]struct{}),
		unanchored: make(map[*selector]struct{}),
	}
}

// addIdentity records a new identity and returns the selectors it joined.
// The caller makes sure id is not known yet.
func (x *selectorIndex) addIdentity(id protocol.NumericIdentity, labels protocol.Labels, cluster string) (*identity, []*selector) {
	set := labels.Map()
	c, ok := set[protocol.LabelPolicyCluster]
	ident := &identity{id: id, labels: labels, set: set, local: ok && c == cluster, in: make(map[*selector]struct{})}
	x.idents[id] = ident
	for k, v := range set {
		kv := labelKV{k, v}
		p := x.postings[kv]
		if p == nil {
			p = make(map[protocol.NumericIdentity]*identity)
			x.postings[kv] = p
		}
		p[id] = ident
	}
	var joined []*selector
	try := func(s *selector) {
		if s.spec.matches(set) {
			s.members[id] = ident
			ident.in[s] = struct{}{}
			joined = append(joined, s)
		}
	}
	// An identity has one value per key, so it reaches a selector through
	// at most one anchor label.
	for k, v := range set {
		for s := range x.anchored[labelKV{k, v}] {
			try(s)
		}
	}
	for s := range x.unanchored {
		try(s)
	}
	return ident, joined
}

// removeIdentity forgets an identity; it has left every selector in
// ident.in, which the caller may still read.
func (x *selectorIndex) removeIdentity(ident *identity) {
	delete(x.idents, ident.id)
	for k, v := range ident.set {
		kv := labelKV{k, v}
		p := x.postings[kv]
		delete(p, ident.id)
		if len(p) == 0 {
			delete(x.postings, kv)
		}
	}
	for s := range ident.in {
		delete(s.members, ident.id)
	}
}

// acquire returns the selector for spec, creating it with its members when
// it is new. Release it with release once nothing uses it.
func (x *selectorIndex) acquire(spec selectorSpec) *selector {
	if s, ok := x.selectors[spec.key]; ok {
		return s
	}
	s := &selector{
		spec:      spec,
		members:   make(map[protocol.NumericIdentity]*identity),
		subjectOf: make(map[*policy]struct{}),
		peerOf:    make(map[*rule]struct{}),
	}
	x.selectors[spec.key] = s
	// Anchor on the In requirement with the fewest candidate identities
	// now: it bounds the work of this first match and, usually, how often
	// a new identity has to try the selector.
	best := -1
	for i, r := range spec.reqs {
		if r.op != opIn {
			continue
		}
		n := 0
		for _, v := range r.values {
			n += len(x.postings[labelKV{r.key, v}])
		}
		if best < 0 || n < best {
			best = n
			s.anchor = &spec.reqs[i]
		}
	}
	match := func(ident *identity) {
		if spec.matches(ident.set) {
			s.members[ident.id] = ident
			ident.in[s] = struct{}{}
		}
	}
	if s.anchor == nil {
		x.unanchored[s] = struct{}{}
		for _, ident := range x.idents {
			match(ident)
		}
		return s
	}
	for _, v := range s.anchor.values {
		kv := labelKV{s.anchor.key, v}
		a := x.anchored[kv]
		if a == nil {
			a = make(map[*selector]struct{})
			x.anchored[kv] = a
		}
		a[s] = struct{}{}
		for _, ident := range x.postings[kv] {
			match(ident)
		}
	}
	return s
}

// release drops s when nothing uses it any more.
func (x *selectorIndex) release(s *selector) {
	if !s.unused() {
		return
	}
	delete(x.selectors, s.spec.key)
	if s.anchor == nil {
		delete(x.unanchored, s)
	} else {
		for _, v := range s.anchor.values {
			kv := labelKV{s.anchor.key, v}
			delete(x.anchored[kv], s)
			if len(x.anchored[kv]) == 0 {
				delete(x.anchored, kv)
			}
		}
	}
	for _, ident := range s.members {
		delete(ident.in, s)
	}
}
