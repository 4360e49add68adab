package reconcilers_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Reconcilers own their goroutines: after every test has stopped them
// none may be left running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
