package state

import (
	"sync"
	"time"
)

// Changes collects the keys that changed since its consumer last took them,
// with the time each first changed, and wakes the consumer. Safe for
// concurrent use.
type Changes[K comparable] struct {
	notify chan struct{} // capacity 1: a pending wake-up

	mu   sync.Mutex      // guards the fields below
	keys map[K]time.Time // key -> first change not yet taken
	full bool            // a full resync was requested
}

func newChanges[K comparable]() *Changes[K] {
	return &Changes[K]{notify: make(chan struct{}, 1), keys: make(map[K]time.Time)}
}

// Notify is readable when changes are pending.
func (c *Changes[K]) Notify() <-chan struct{} { return c.notify }

// Take returns the pending keys and whether a full resync was requested,
// and resets both.
func (c *Changes[K]) Take() (keys map[K]time.Time, full bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys, full = c.keys, c.full
	c.keys, c.full = make(map[K]time.Time), false
	return keys, full
}

// Pending returns how many keys are waiting.
func (c *Changes[K]) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.keys)
}

// RequestFull asks the consumer for a full resync.
func (c *Changes[K]) RequestFull() {
	c.mu.Lock()
	c.full = true
	c.mu.Unlock()
	c.wake()
}

// Requeue puts keys back, for a consumer that failed to apply them; their
// first-change times are kept.
func (c *Changes[K]) Requeue(keys map[K]time.Time) {
	if len(keys) == 0 {
		return
	}
	c.mu.Lock()
	for k, t := range keys {
		if cur, ok := c.keys[k]; !ok || t.Before(cur) {
			c.keys[k] = t
		}
	}
	c.mu.Unlock()
	c.wake()
}

func (c *Changes[K]) add(k K, now time.Time) {
	c.mu.Lock()
	if _, ok := c.keys[k]; !ok {
		c.keys[k] = now
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
