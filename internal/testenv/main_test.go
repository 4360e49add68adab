package testenv_test

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

// Two control planes: most teammates' tests need only the apiserver; some
// need the controllers and scheduler.
var (
	apiOnly         = testenv.New(testenv.Options{})
	withControllers = testenv.New(testenv.Options{Controllers: true})
)

func TestMain(m *testing.M) {
	code := testenv.Run(m, apiOnly, withControllers)
	if code == 0 {
		// Everything the tests and the control planes started must be
		// gone once they are stopped.
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutines leaked after the control planes stopped: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
