package policy

import (
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

// kube is the real control plane the integration tests share.
var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) { testenv.Main(m, kube) }
