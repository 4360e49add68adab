package flows

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
)

// chanSource is a Source fed by the test: an event, or an error to
// return from one Read.
type chanSource chan any

func (c chanSource) Read(ctx context.Context) (tunnelpolicy.FlowEvent, error) {
	select {
	case <-ctx.Done():
		return tunnelpolicy.FlowEvent{}, ctx.Err()
	case v, ok := <-c:
		if !ok {
			return tunnelpolicy.FlowEvent{}, tunnelpolicy.ErrClosed
		}
		if err, isErr := v.(error); isErr {
			return tunnelpolicy.FlowEvent{}, err
		}
		return v.(tunnelpolicy.FlowEvent), nil
	}
}

func flow(port uint16, dropped bool) tunnelpolicy.FlowEvent {
	return tunnelpolicy.FlowEvent{
		Src:      netip.MustParseAddrPort("10.1.0.5:40000"),
		Dst:      netip.AddrPortFrom(netip.MustParseAddr("10.2.0.7"), port),
		Protocol: maps.ProtoTCP, Direction: maps.Egress, Dropped: dropped,
		SrcCluster: 1, DstCluster: 2, SrcIdentity: 65836, DstIdentity: 131372,
	}
}

func ports(evs []tunnelpolicy.FlowEvent) []uint16 {
	var out []uint16
	for _, e := range evs {
		out = append(out, e.Dst.Port())
	}
	return out
}

// waitEvents receives n events from s.
func waitEvents(t *testing.T, s *Subscription, n int) []tunnelpolicy.FlowEvent {
	t.Helper()
	var got []tunnelpolicy.FlowEvent
	timeout := time.After(10 * time.Second)
	for len(got) < n {
		select {
		case ev := <-s.Events():
			got = append(got, ev)
		case <-timeout:
			t.Fatalf("got %d events, want %d", len(got), n)
		}
	}
	return got
}

func TestHubHistoryFilterAndFanOut(t *testing.T) {
	src := make(chanSource)
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	h, err := New(slog.New(slog.DiscardHandler), Config{Source: src, History: 4, Buffer: 2, Metrics: m})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	// A subscriber that sees everything, to know when the hub has
	// published.
	_, all := h.Subscribe(Filter{}, 0)
	defer all.Close()
	for p := uint16(1); p <= 6; p++ {
		src <- flow(p, p%2 == 0)
		waitEvents(t, all, 1)
	}
	src <- errors.New("truncated record") // skipped and counted

	// History keeps the 4 latest; the filter picks from them.
	past, drops := h.Subscribe(Filter{Verdict: Dropped}, 10)
	defer drops.Close()
	if got := ports(past); len(got) != 2 || got[0] != 4 || got[1] != 6 {
		t.Errorf("dropped history = %v, want [4 6] (the latest 4 events hold 3..6)", got)
	}
	past, _ = h.Subscribe(Filter{}, 3)
	if got := ports(past); len(got) != 3 || got[0] != 4 || got[2] != 6 {
		t.Errorf("history of 3 = %v, want [4 5 6]", got)
	}
	if past, _ := h.Subscribe(Filter{Port: 5, Address: netip.MustParseAddr("10.2.0.7"), ClusterID: 2, Protocol: maps.ProtoTCP, Direction: maps.Egress}, 10); len(past) != 1 {
		t.Errorf("port 5 history = %v", ports(past))
	}
	if past, _ := h.Subscribe(Filter{Protocol: maps.ProtoUDP}, 10); len(past) != 0 {
		t.Errorf("UDP history = %v, want none", ports(past))
	}

	// Live events follow the history without a gap; a subscriber that
	// does not read loses what does not fit its buffer, and only it.
	for p := uint16(7); p <= 12; p++ {
		src <- flow(p, true)
		waitEvents(t, all, 1)
	}
	if got := ports(waitEvents(t, drops, 2)); got[0] != 7 || got[1] != 8 {
		t.Errorf("live dropped = %v, want 7 and 8 first", got)
	}
	if drops.Lost() != 4 {
		t.Errorf("lost = %d, want 4 (6 events, room for 2)", drops.Lost())
	}
	if got := testutil.ToFloat64(m.decodeErrors); got != 1 {
		t.Errorf("decode errors = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.events); got != 12 {
		t.Errorf("events = %v, want 12", got)
	}

	// The hub stopping ends every subscription.
	cancel()
	<-done
	select {
	case <-drops.Done():
	default:
		t.Error("subscription not done after the hub stopped")
	}
}
