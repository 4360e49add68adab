package remotecluster_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Readers own their goroutines: after every test has stopped its readers
// and servers, none may be left running.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
