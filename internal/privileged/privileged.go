// Package privileged gates tests that need root (network namespaces, BPF,
// WireGuard): they skip with a reason when not root, and fail instead when
// ISTHMUS_REQUIRE_PRIVILEGED=1, as CI sets, so a missing capability never
// passes silently.
package privileged

import (
	"os"
	"testing"
)

// EnvRequire is the variable that turns privileged skips into failures.
const EnvRequire = "ISTHMUS_REQUIRE_PRIVILEGED"

// Required reports whether privileged tests must run.
func Required() bool { return os.Getenv(EnvRequire) == "1" }

// Require skips t when the process is not root, or fails it when privileged
// tests are required.
func Require(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	Unavailable(tb, "needs root (network namespaces, BPF, WireGuard); run as root")
}

// Unavailable skips tb with reason, or fails it when privileged tests are
// required. Use it when a kernel feature or tool the test needs is missing.
func Unavailable(tb testing.TB, reason string) {
	tb.Helper()
	if Required() {
		tb.Fatalf("%s is set but this test cannot run: %s", EnvRequire, reason)
	}
	tb.Skip(reason)
}
