package remotecluster

import (
	"math/rand/v2"
	"time"
)

// backoff yields exponentially growing waits with jitter, so that many
// agents losing the same remote at once do not reconnect in lockstep. Not
// safe for concurrent use.
type backoff struct {
	min, max time.Duration
	attempt  int
}

// next returns the wait before the next attempt: a random duration in
// [d/2, d], where d doubles with each attempt from min up to max.
func (b *backoff) next() time.Duration {
	d := b.min
	for i := 0; i < b.attempt && d < b.max; i++ {
		d *= 2
	}
	d = min(d, b.max)
	b.attempt++
	half := d / 2
	return half + rand.N(d-half+1)
}

// reset makes the next wait start from min again.
func (b *backoff) reset() { b.attempt = 0 }
