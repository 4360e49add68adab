package meshtest

import (
	"testing"
	"time"
)

// Eventually polls cond until it returns nil or timeout passes, then fails
// tb with cond's last error. It waits for a condition; it is not a sleep.
func Eventually(tb testing.TB, timeout time.Duration, cond func() error) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("condition not met after %s: %v", timeout, err)
		}
		<-tick.C
	}
}
