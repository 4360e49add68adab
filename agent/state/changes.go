package state

import (
	"sync"
	"time"
)

// Stamp is when a key first changed, in nanoseconds on the monotonic clock
// of the Changes that recorded it; Changes.Age turns it into a duration. It
// is 8 bytes where a time.Time is 24, which matters with 250k keys queued.
type Stamp int64

// Changes collects the keys that changed since its consumer last took them,
// with the time each first changed, and wakes the consumer. Safe for
// concurrent use.
type Changes[K comparable] struct {
	notify chan struct{} // capacity 1: a pending wake-up
	epoch  time.Time     // monotonic origin of the stamps

	mu   sync.Mutex  // guards the fields below
	keys map[K]Stamp // key -> first change not yet taken
	full bool        // a full resync was requested
}

func newChanges[K comparable]() *Changes[K] {
	return &Changes[K]{notify: make(chan struct{}, 1), epoch: time.Now(), keys: make(map[K]Stamp)}
}

// Notify is readable when changes are pending.
func (c *Changes[K]) Notify() <-chan struct{} { return c.notify }

// Take returns up to max pending keys (every one when max <= 0) and
// whether a full resync was requested, and forgets what it returned. A
// consumer takes in bounded batches so that its own buffers stay small
// however large the backlog.
func (c *Changes[K]) Take(max int) (keys map[K]Stamp, full bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	full, c.full = c.full, false
	if max <= 0 || len(c.keys) <= max {
		keys = c.keys
		// A fresh map: Go maps never shrink, and the backlog of an initial
		// sync would otherwise stay allocated.
		c.keys = make(map[K]Stamp)
		return keys, full
	}
	keys = make(map[K]Stamp, max)
	for k, s := range c.keys {
		if len(keys) == max {
			break
		}
		keys[k] = s
		delete(c.keys, k)
	}
	return keys, full
}

// Pending returns how many keys are waiting.
func (c *Changes[K]) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.keys)
}

// Age returns how long before now s was stamped.
func (c *Changes[K]) Age(s Stamp, now time.Time) time.Duration {
	return now.Sub(c.epoch) - time.Duration(s)
}

// RequestFull asks the consumer for a full resync.
func (c *Changes[K]) RequestFull() {
	c.mu.Lock()
	c.full = true
	c.mu.Unlock()
	c.wake()
}

// Requeue puts keys back, for a consumer that failed to apply them; their
// first-change stamps are kept.
func (c *Changes[K]) Requeue(keys map[K]Stamp) {
	if len(keys) == 0 {
		return
	}
	c.mu.Lock()
	for k, s := range keys {
		if cur, ok := c.keys[k]; !ok || s < cur {
			c.keys[k] = s
		}
	}
	c.mu.Unlock()
	c.wake()
}

func (c *Changes[K]) add(k K, now time.Time) {
	s := Stamp(now.Sub(c.epoch))
	c.mu.Lock()
	if _, ok := c.keys[k]; !ok {
		c.keys[k] = s
	}
	c.mu.Unlock()
	c.wake()
}

func (c *Changes[K]) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}
