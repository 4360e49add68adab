// Package flows fans the node's flow events out: one reader of the tunnel
// policy programs' ring buffer (there is one consumer position per ring
// buffer, so one tunnelpolicy.FlowReader per node) feeds any number of
// subscribers, such as the local API's Flows streams, each with its own
// filter, and keeps the latest events for subscribers that ask for
// history. It also exports the programs' per-reason packet counters as
// Prometheus metrics.
//
// A slow subscriber never slows the reader: events it has no room for
// are counted as lost to it and skipped.
//
// It must not import apiserver/, the Kubernetes client libraries, or the
// other agent packages.
package flows

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// Source is where events come from: a *tunnelpolicy.FlowReader.
type Source interface {
	// Read blocks until an event arrives or ctx is done; see
	// tunnelpolicy.FlowReader.Read.
	Read(ctx context.Context) (tunnelpolicy.FlowEvent, error)
}

// Defaults of Config fields.
const (
	DefaultHistory = 1024
	DefaultBuffer  = 512
)

// Config configures a Hub.
type Config struct {
	// Source is read by Run. Required.
	Source Source
	// History is how many of the latest events are kept for new
	// subscribers. Zero means DefaultHistory.
	History int
	// Buffer is each subscriber's queue length. Zero means DefaultBuffer.
	Buffer int
	// Metrics; nil means none.
	Metrics *Metrics
}

// Hub reads events and hands them to subscribers. Run does the reading;
// Subscribe is safe for concurrent use.
type Hub struct {
	logger *slog.Logger
	cfg    Config

	mu   sync.Mutex // guards the fields below
	ring []tunnelpolicy.FlowEvent
	next int // where the next event goes in ring
	full bool
	subs map[*Subscription]struct{}
}

// New returns a Hub of cfg.Source.
func New(logger *slog.Logger, cfg Config) (*Hub, error) {
	if cfg.Source == nil {
		return nil, errors.New("flows: Config.Source is required")
	}
	if cfg.History <= 0 {
		cfg.History = DefaultHistory
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	return &Hub{logger: logger, cfg: cfg, ring: make([]tunnelpolicy.FlowEvent, cfg.History), subs: map[*Subscription]struct{}{}}, nil
}

// Run reads events until ctx is done or the source is closed, then ends
// every subscription.
func (h *Hub) Run(ctx context.Context) {
	defer h.closeAll()
	for {
		ev, err := h.cfg.Source.Read(ctx)
		switch {
		case ctx.Err() != nil || errors.Is(err, tunnelpolicy.ErrClosed):
			return
		case err != nil:
			// A record that does not decode; the next read goes on.
			h.cfg.Metrics.decodeError()
			h.logger.Warn("Skipped a flow event", logfields.Error, err)
			continue
		}
		h.publish(ev)
	}
}

func (h *Hub) publish(ev tunnelpolicy.FlowEvent) {
	h.cfg.Metrics.event()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ring[h.next] = ev
	h.next++
	if h.next == len(h.ring) {
		h.next, h.full = 0, true
	}
	for s := range h.subs {
		if !s.filter.Match(ev) {
			continue
		}
		select {
		case s.c <- ev:
		default:
			s.lost.Add(1)
			h.cfg.Metrics.subscriberDrop()
		}
	}
}

// Subscribe returns up to history of the latest events that match f,
// oldest first, and a subscription to the events that follow, with no
// gap and no repeat between the two. Close the subscription when done.
func (h *Hub) Subscribe(f Filter, history int) ([]tunnelpolicy.FlowEvent, *Subscription) {
	s := &Subscription{hub: h, filter: f, c: make(chan tunnelpolicy.FlowEvent, h.cfg.Buffer), done: make(chan struct{})}
	h.mu.Lock()
	defer h.mu.Unlock()
	var past []tunnelpolicy.FlowEvent
	if history > 0 {
		// Walk back from the newest, then reverse.
		n := h.next
		if h.full {
			n = len(h.ring)
		}
		for i := 1; i <= n && len(past) < history; i++ {
			ev := h.ring[(h.next-i+len(h.ring))%len(h.ring)]
			if f.Match(ev) {
				past = append(past, ev)
			}
		}
		for i, j := 0, len(past)-1; i < j; i, j = i+1, j-1 {
			past[i], past[j] = past[j], past[i]
		}
	}
	if h.subs == nil {
		close(s.done) // the hub has stopped
		return past, s
	}
	h.subs[s] = struct{}{}
	h.cfg.Metrics.subscribers(len(h.subs))
	return past, s
}

func (h *Hub) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		close(s.done)
	}
	h.subs = nil
	h.cfg.Metrics.subscribers(0)
}

// Subscription is one subscriber's stream of events. Safe for concurrent
// use.
type Subscription struct {
	hub    *Hub
	filter Filter
	c      chan tunnelpolicy.FlowEvent
	done   chan struct{} // closed when the hub stops
	lost   atomic.Uint64
	closed sync.Once
}

// Events delivers the events that match the filter.
func (s *Subscription) Events() <-chan tunnelpolicy.FlowEvent { return s.c }

// Done is closed when the hub stopped and no more events come.
func (s *Subscription) Done() <-chan struct{} { return s.done }

// Lost counts the matching events skipped because the subscriber did not
// keep up.
func (s *Subscription) Lost() uint64 { return s.lost.Load() }

// Close ends the subscription.
func (s *Subscription) Close() {
	s.closed.Do(func() {
		h := s.hub
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.subs != nil {
			delete(h.subs, s)
			h.cfg.Metrics.subscribers(len(h.subs))
		}
	})
}
