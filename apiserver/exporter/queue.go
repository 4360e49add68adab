package exporter

import (
	"sync"
	"time"
)

type kind uint8

const (
	kindNamespace kind = iota
	kindNode
	kindPod
	kindService
)

type item struct {
	kind kind
	key  string
}

// dirtyQueue collects the objects that changed, each once with the time
// it was first seen changed, for one worker to take all at once. Unlike a
// workqueue it hands over everything pending in one drain (the worker
// converts a whole batch, then the writer commits it in few transactions)
// and keeps the first-seen time for the export lag.
type dirtyQueue struct {
	kick chan struct{}

	mu       sync.Mutex // guards the fields below
	items    map[item]time.Time
	drains   uint64
	barriers []barrier
}

type barrier struct {
	after uint64 // done once drain number `after` is processed
	done  chan struct{}
}

func newDirtyQueue() *dirtyQueue {
	return &dirtyQueue{kick: make(chan struct{}, 1), items: make(map[item]time.Time)}
}

func (q *dirtyQueue) wake() {
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

func (q *dirtyQueue) add(k kind, key string) {
	now := time.Now()
	q.mu.Lock()
	if _, ok := q.items[item{k, key}]; !ok {
		q.items[item{k, key}] = now
	}
	q.mu.Unlock()
	q.wake()
}

// drain takes every pending item and numbers the drain.
func (q *dirtyQueue) drain() (map[item]time.Time, uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	items := q.items
	q.items = make(map[item]time.Time, len(items))
	q.drains++
	return items, q.drains
}

// barrier returns a channel closed once everything added before the call
// has been processed.
func (q *dirtyQueue) barrier() <-chan struct{} {
	q.mu.Lock()
	b := barrier{after: q.drains + 1, done: make(chan struct{})}
	q.barriers = append(q.barriers, b)
	q.mu.Unlock()
	q.wake()
	return b.done
}

// processed tells barriers that drain n is done.
func (q *dirtyQueue) processed(n uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	kept := q.barriers[:0]
	for _, b := range q.barriers {
		if b.after <= n {
			close(b.done)
			continue
		}
		kept = append(kept, b)
	}
	q.barriers = kept
}
