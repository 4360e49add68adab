package flows

import (
	"net/netip"

	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Verdict selects events by outcome.
type Verdict int

const (
	// AnyVerdict matches every event.
	AnyVerdict Verdict = iota
	// Dropped matches dropped packets only.
	Dropped
	// Passed matches new flows that passed only.
	Passed
)

// Filter selects events. Its zero value matches every event; each field
// set narrows the selection, and fields about an end (address, port,
// identity, cluster) match either end.
type Filter struct {
	Verdict   Verdict
	Direction maps.Direction // 0: both
	Protocol  maps.Protocol  // maps.ProtoAny: every protocol
	Address   netip.Addr     // zero: any
	Port      uint16         // 0: any
	Identity  protocol.NumericIdentity
	ClusterID uint16
}

// Match reports whether ev passes the filter.
func (f Filter) Match(ev tunnelpolicy.FlowEvent) bool {
	switch {
	case f.Verdict == Dropped && !ev.Dropped,
		f.Verdict == Passed && ev.Dropped,
		f.Direction != 0 && ev.Direction != f.Direction,
		f.Protocol != maps.ProtoAny && ev.Protocol != f.Protocol,
		f.Address.IsValid() && ev.Src.Addr() != f.Address && ev.Dst.Addr() != f.Address,
		f.Port != 0 && ev.Src.Port() != f.Port && ev.Dst.Port() != f.Port,
		f.Identity != 0 && ev.SrcIdentity != f.Identity && ev.DstIdentity != f.Identity,
		f.ClusterID != 0 && ev.SrcCluster != f.ClusterID && ev.DstCluster != f.ClusterID:
		return false
	}
	return true
}
