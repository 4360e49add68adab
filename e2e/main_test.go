package e2e

import (
	"flag"
	"testing"

	"github.com/isthmus-mesh/isthmus/e2e/testbed"
)

var (
	bedOptions = testbed.RegisterFlags(flag.CommandLine)
	// bed is set by TestMain before any test runs.
	bed *testbed.Testbed
)

func TestMain(m *testing.M) {
	flag.Parse()
	bed = testbed.New(*bedOptions)
	testbed.Main(m, bed)
}
