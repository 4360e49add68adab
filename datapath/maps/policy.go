package maps

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Direction is the direction of traffic relative to a local endpoint.
type Direction uint8

const (
	// Ingress is traffic into a local endpoint, arriving from the tunnel.
	Ingress Direction = 1
	// Egress is traffic out of a local endpoint, leaving through the tunnel.
	Egress Direction = 2
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Protocol is an IP protocol number.
type Protocol uint8

// Protocols the datapath distinguishes.
const (
	ProtoAny    Protocol = 0 // policy wildcard
	ProtoICMP   Protocol = 1
	ProtoTCP    Protocol = 6
	ProtoUDP    Protocol = 17
	ProtoICMPv6 Protocol = 58
	ProtoSCTP   Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoICMP:
		return "ICMP"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoICMPv6:
		return "ICMPv6"
	case ProtoSCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Verdict is what a policy entry decides.
type Verdict uint8

const (
	Allow Verdict = 1
	Deny  Verdict = 2
)

func (v Verdict) String() string {
	switch v {
	case Allow:
		return "allow"
	case Deny:
		return "deny"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// PolicyEntryKey selects the traffic a policy entry applies to.
//
// Wildcards: RemoteIdentity 0 matches any remote identity, Port 0 any port,
// Protocol ProtoAny any protocol; a Port needs a Protocol. The tunnel
// programs look a packet up in this order and the first entry found decides:
//
//  1. remote identity, port, protocol
//  2. remote identity, any port, protocol
//  3. remote identity, any port, any protocol
//  4. any identity, port, protocol
//  5. any identity, any port, protocol
//  6. any identity, any port, any protocol
//
// So a more specific entry overrides a broader one. To make deny win over
// allow (as policies usually mean), do not write allow entries that a deny
// entry covers. Traffic from an address missing from the ipcache has the
// world identity (protocol.IdentityWorld).
type PolicyEntryKey struct {
	Direction      Direction
	LocalIdentity  protocol.NumericIdentity
	RemoteIdentity protocol.NumericIdentity
	Port           uint16
	Protocol       Protocol
}

func (k PolicyEntryKey) raw() (PolicyKey, error) {
	switch {
	case k.Direction != Ingress && k.Direction != Egress:
		return PolicyKey{}, fmt.Errorf("policy entry %+v: direction must be ingress or egress", k)
	case k.LocalIdentity == 0:
		return PolicyKey{}, fmt.Errorf("policy entry %+v: local identity is required", k)
	case k.LocalIdentity > protocol.MaxNumericIdentity || k.RemoteIdentity > protocol.MaxNumericIdentity:
		return PolicyKey{}, fmt.Errorf("policy entry %+v: identity exceeds 24 bits", k)
	case k.Port != 0 && k.Protocol == ProtoAny:
		return PolicyKey{}, fmt.Errorf("policy entry %+v: a port needs a protocol", k)
	}
	return PolicyKey{
		LocalIdentity:  uint32(k.LocalIdentity),
		RemoteIdentity: uint32(k.RemoteIdentity),
		DPort:          k.Port,
		Proto:          uint8(k.Protocol),
		Direction:      uint8(k.Direction),
	}, nil
}

func (k PolicyKey) entryKey() PolicyEntryKey {
	return PolicyEntryKey{
		Direction:      Direction(k.Direction),
		LocalIdentity:  protocol.NumericIdentity(k.LocalIdentity),
		RemoteIdentity: protocol.NumericIdentity(k.RemoteIdentity),
		Port:           k.DPort,
		Protocol:       Protocol(k.Proto),
	}
}

// PolicyEntry is a policy decision.
type PolicyEntry struct {
	Verdict Verdict
	// RuleID is opaque to the datapath and reported in flow events, so a
	// drop can be traced back to the rule that caused it.
	RuleID uint32
}

func (e PolicyEntry) raw() (PolicyValue, error) {
	if e.Verdict != Allow && e.Verdict != Deny {
		return PolicyValue{}, fmt.Errorf("policy verdict %d: must be allow or deny", e.Verdict)
	}
	return PolicyValue{Verdict: uint8(e.Verdict), RuleID: e.RuleID}, nil
}

// Policy is the isthmus_policy map. Safe for concurrent use.
type Policy struct {
	m *ebpf.Map
}

// Map returns the underlying map.
func (p *Policy) Map() *ebpf.Map { return p.m }

// Upsert writes one entry.
func (p *Policy) Upsert(k PolicyEntryKey, e PolicyEntry) error {
	rk, err := k.raw()
	if err != nil {
		return err
	}
	rv, err := e.raw()
	if err != nil {
		return err
	}
	if err := p.m.Put(rk, rv); err != nil {
		return fmt.Errorf("policy upsert: %w", explainWrite(p.m, err))
	}
	return nil
}

// Delete removes one entry; an absent entry is not an error.
func (p *Policy) Delete(k PolicyEntryKey) error {
	rk, err := k.raw()
	if err != nil {
		return err
	}
	if err := p.m.Delete(rk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("policy delete: %w", err)
	}
	return nil
}

// Dump returns every entry.
func (p *Policy) Dump() (map[PolicyEntryKey]PolicyEntry, error) {
	raw, err := Dump[PolicyKey, PolicyValue](p.m)
	if err != nil {
		return nil, err
	}
	out := make(map[PolicyEntryKey]PolicyEntry, len(raw))
	for k, v := range raw {
		out[k.entryKey()] = PolicyEntry{Verdict: Verdict(v.Verdict), RuleID: v.RuleID}
	}
	return out, nil
}

// Reconcile makes the map hold exactly desired. Invalid entries are skipped
// and reported (InvalidEntriesError); the rest lands. Call
// ConfigMap.BumpPolicyRevision afterwards so tracked flows are re-checked.
func (p *Policy) Reconcile(desired map[PolicyEntryKey]PolicyEntry) (Stats, error) {
	raw := make(map[PolicyKey]PolicyValue, len(desired))
	var bad []error
	for k, e := range desired {
		rk, err := k.raw()
		if err == nil {
			var rv PolicyValue
			if rv, err = e.raw(); err == nil {
				raw[rk] = rv
				continue
			}
		}
		bad = append(bad, err)
	}
	st, err := Reconcile(p.m, raw)
	st.Failed += len(bad)
	if len(bad) > 0 {
		err = errors.Join(err, &InvalidEntriesError{Map: NamePolicy, Errs: bad})
	}
	return st, err
}

// Enforced says in which directions some policy selects a local identity.
// A direction that is not enforced lets traffic pass, unless the mesh's
// default deny is on (MeshSettings.DefaultDeny); an enforced one drops what
// no policy entry allows.
type Enforced struct {
	Ingress bool
	Egress  bool
}

// Enforcement is the isthmus_pol_enf map: local identity -> Enforced. An
// identity that is absent is enforced in neither direction. Safe for
// concurrent use.
type Enforcement struct {
	m *ebpf.Map
}

// Map returns the underlying map.
func (e *Enforcement) Map() *ebpf.Map { return e.m }

func b2u(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// Set records enforcement for id; both directions false deletes the entry.
func (e *Enforcement) Set(id protocol.NumericIdentity, en Enforced) error {
	if !en.Ingress && !en.Egress {
		if err := e.m.Delete(uint32(id)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("policy enforcement delete %d: %w", id, err)
		}
		return nil
	}
	v := PolicyEnforcement{Ingress: b2u(en.Ingress), Egress: b2u(en.Egress)}
	if err := e.m.Put(uint32(id), v); err != nil {
		return fmt.Errorf("policy enforcement set %d: %w", id, explainWrite(e.m, err))
	}
	return nil
}

// Reconcile makes the map hold exactly desired (entries with both
// directions false are left out).
func (e *Enforcement) Reconcile(desired map[protocol.NumericIdentity]Enforced) (Stats, error) {
	raw := make(map[uint32]PolicyEnforcement, len(desired))
	for id, en := range desired {
		if en.Ingress || en.Egress {
			raw[uint32(id)] = PolicyEnforcement{Ingress: b2u(en.Ingress), Egress: b2u(en.Egress)}
		}
	}
	return Reconcile(e.m, raw)
}
