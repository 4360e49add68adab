package tunnelpolicy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// FlowEvent is a new flow or a dropped packet seen on the tunnel device.
type FlowEvent struct {
	Time      time.Time // wall clock, converted from the kernel's monotonic stamp
	Src, Dst  netip.AddrPort
	Protocol  maps.Protocol
	Direction maps.Direction
	Dropped   bool
	Reason    Reason
	// Identities and clusters of the source and destination, from the
	// ipcache; an address missing there is protocol.IdentityWorld.
	SrcIdentity, DstIdentity protocol.NumericIdentity
	SrcCluster, DstCluster   uint16
	Ifindex                  int
	RuleID                   uint32 // policy entry that decided, 0 = none
	Length                   uint32 // packet length in bytes
}

// ErrClosed is returned by Read after Close.
var ErrClosed = errors.New("flow reader closed")

// FlowReader reads flow events from the pinned ring buffer.
//
// A ring buffer has one consumer position: events go to whichever reader
// takes them, so run one FlowReader per node and fan out from there. Read
// must not be called concurrently; Close may be called from any goroutine
// and interrupts a blocked Read.
type FlowReader struct {
	rd *ringbuf.Reader
	// monoToWall is the wall time minus CLOCK_MONOTONIC, sampled once.
	monoToWall time.Duration
}

// NewFlowReader opens a reader on m's flow ring buffer.
func NewFlowReader(m *maps.Maps) (*FlowReader, error) {
	rd, err := ringbuf.NewReader(m.Flows)
	if err != nil {
		return nil, fmt.Errorf("open flow ring buffer: %w", err)
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		rd.Close()
		return nil, fmt.Errorf("read monotonic clock: %w", err)
	}
	return &FlowReader{rd: rd, monoToWall: time.Duration(time.Now().UnixNano() - ts.Nano())}, nil
}

// Read blocks until an event arrives, ctx is done (returning ctx.Err()) or
// the reader is closed (ErrClosed). A record that does not decode is
// returned as an error; the next Read continues after it.
func (r *FlowReader) Read(ctx context.Context) (FlowEvent, error) {
	stop := context.AfterFunc(ctx, func() { _ = r.rd.Flush() })
	defer stop()
	for {
		rec, err := r.rd.Read()
		switch {
		case errors.Is(err, ringbuf.ErrFlushed):
			if ctx.Err() != nil {
				return FlowEvent{}, ctx.Err()
			}
			continue
		case errors.Is(err, ringbuf.ErrClosed):
			return FlowEvent{}, ErrClosed
		case err != nil:
			return FlowEvent{}, fmt.Errorf("read flow event: %w", err)
		}
		return r.decode(rec.RawSample)
	}
}

func (r *FlowReader) decode(raw []byte) (FlowEvent, error) {
	var fr maps.FlowRecord
	if len(raw) < int(unsafe.Sizeof(fr)) {
		return FlowEvent{}, fmt.Errorf("flow event of %d bytes, want %d", len(raw), unsafe.Sizeof(fr))
	}
	if _, err := binary.Decode(raw, binary.NativeEndian, &fr); err != nil {
		return FlowEvent{}, fmt.Errorf("decode flow event: %w", err)
	}
	return FlowEvent{
		Time:        time.Unix(0, int64(fr.TimestampNs)+int64(r.monoToWall)),
		Src:         netip.AddrPortFrom(fr.SAddr.Addr(), fr.SPort),
		Dst:         netip.AddrPortFrom(fr.DAddr.Addr(), fr.DPort),
		Protocol:    maps.Protocol(fr.Proto),
		Direction:   maps.Direction(fr.Direction),
		Dropped:     fr.Verdict == 2,
		Reason:      Reason(fr.Reason),
		SrcIdentity: protocol.NumericIdentity(fr.SrcIdentity),
		DstIdentity: protocol.NumericIdentity(fr.DstIdentity),
		SrcCluster:  fr.SrcCluster,
		DstCluster:  fr.DstCluster,
		Ifindex:     int(fr.Ifindex),
		RuleID:      fr.RuleID,
		Length:      fr.PktLen,
	}, nil
}

// Close stops the reader and interrupts a blocked Read.
func (r *FlowReader) Close() error { return r.rd.Close() }
