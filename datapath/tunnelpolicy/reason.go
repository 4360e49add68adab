package tunnelpolicy

import (
	"fmt"

	"github.com/isthmus-mesh/isthmus/datapath/maps"
)

// Reason says why the programs passed or dropped a packet: the index of
// isthmus_metrics and the reason in flow events. The values match REASON_*
// in datapath/bpf/include/isthmus/maps.h.
type Reason uint8

const (
	ReasonAllowedPolicy     Reason = 1  // new flow allowed by a policy entry
	ReasonAllowedUnenforced Reason = 2  // new flow; no policy selects the local endpoint
	ReasonEstablished       Reason = 3  // tracked flow, same direction
	ReasonReply             Reason = 4  // reply of a tracked flow
	ReasonNotIP             Reason = 5  // neither IPv4 nor IPv6: passed unjudged
	ReasonFragment          Reason = 6  // non-first fragment: passed, the first was judged
	ReasonPolicyDeny        Reason = 16 // dropped: a deny entry matched
	ReasonNoMatch           Reason = 17 // dropped: policy enforced, no entry allows
	ReasonDefaultDeny       Reason = 18 // dropped: no policy selects it, mesh default deny
	ReasonMalformed         Reason = 19 // dropped: truncated or invalid header

	// ReasonEventsLost counts flow events lost to a full ring buffer (not
	// packets).
	ReasonEventsLost Reason = 31
)

var reasonNames = map[Reason]string{
	ReasonAllowedPolicy:     "allowed-by-policy",
	ReasonAllowedUnenforced: "allowed-unenforced",
	ReasonEstablished:       "established",
	ReasonReply:             "reply",
	ReasonNotIP:             "not-ip",
	ReasonFragment:          "fragment",
	ReasonPolicyDeny:        "policy-deny",
	ReasonNoMatch:           "policy-no-match",
	ReasonDefaultDeny:       "default-deny",
	ReasonMalformed:         "malformed",
	ReasonEventsLost:        "flow-events-lost",
}

// String returns a stable name, usable as a metric label.
func (r Reason) String() string {
	if n, ok := reasonNames[r]; ok {
		return n
	}
	return fmt.Sprintf("reason-%d", uint8(r))
}

// Dropped reports whether packets with this reason were dropped.
func (r Reason) Dropped() bool { return r >= ReasonPolicyDeny && r < ReasonEventsLost }

// Counter is packets and bytes summed over CPUs.
type Counter struct {
	Packets, Bytes uint64
}

// ReadCounters returns the non-zero counters by reason. The counters are
// pinned with the maps, so they keep counting across agent restarts.
func ReadCounters(m *maps.Maps) (map[Reason]Counter, error) {
	mm := m.Metrics
	out := make(map[Reason]Counter)
	var perCPU []maps.MetricValue
	for i := uint32(0); i < mm.MaxEntries(); i++ {
		if err := mm.Lookup(i, &perCPU); err != nil {
			return nil, fmt.Errorf("read counters: %w", err)
		}
		var c Counter
		for _, v := range perCPU {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		if c != (Counter{}) {
			out[Reason(i)] = c
		}
	}
	return out, nil
}
