package meshpolicy_test

import (
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

// kube is the real control plane the tests share.
var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) { testenv.Main(m, kube) }
