package apiserver_test

import (
	"bufio"
	"context"
	"iter"
	"maps"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

func mapsKeys[V any](m map[string]V) iter.Seq[string] { return maps.Keys(m) }

// deleteMeshConfigMap removes what the apiserver published, so the next
// test may run with another cluster name or ID on the shared control plane.
func deleteMeshConfigMap(t testing.TB, client kubernetes.Interface) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := client.CoreV1().ConfigMaps(meshconfig.Namespace).Delete(ctx, meshconfig.ConfigMapName, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete ConfigMap: %v", err)
	}
}

// kube is the real control plane the tests of this package share.
var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) { testenv.Main(m, kube) }
