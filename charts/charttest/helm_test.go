package charttest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/helmbin"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// kubeVersion is what `helm template` checks the chart's kubeVersion
// against (a real install checks the cluster's): the project's Kubernetes.
const kubeVersion = "1.37.2"

// releaseName is the release the tests render.
const releaseName = "isthmus"

var (
	helmOnce sync.Once
	helmPath string
	helmErr  error
)

// helm returns the pinned helm binary, building it once per machine (a
// minute or two; the cache keeps it).
func helm(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("charttest: builds and runs the pinned helm binary; not part of the unit tier (-short)")
	}
	helmOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
		defer cancel()
		helmPath, helmErr = helmbin.Ensure(ctx, helmbin.Options{Progress: os.Stderr})
	})
	if helmErr != nil {
		t.Fatalf("helm: %v", helmErr)
	}
	return helmPath
}

// chartDir is charts/isthmus.
func chartDir(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source")
	}
	return filepath.Join(filepath.Dir(file), "..", "isthmus")
}

// values are chart values, written to a values file for helm.
type values map[string]any

// runHelm runs helm with args and returns its stdout, or an error holding
// its stderr.
func runHelm(t testing.TB, args ...string) ([]byte, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(helm(t), args...)
	// No user configuration or plugins: the same result everywhere.
	dir := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+dir, "HELM_CACHE_HOME="+dir, "HELM_DATA_HOME="+dir)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("helm %s: %w\n%s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// valuesFile writes v as a values file.
func valuesFile(t testing.TB, v values) string {
	t.Helper()
	b, err := yaml.Marshal(map[string]any(v))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// render runs `helm template` in namespace isthmus-system with v and
// returns the objects, CRDs included.
func render(t testing.TB, v values) []*unstructured.Unstructured {
	t.Helper()
	objs, err := tryRender(t, meshconfig.Namespace, v)
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func tryRender(t testing.TB, namespace string, v values) ([]*unstructured.Unstructured, error) {
	t.Helper()
	out, err := runHelm(t, "template", releaseName, chartDir(t), "--namespace", namespace,
		"--kube-version", kubeVersion, "--include-crds", "--values", valuesFile(t, v))
	if err != nil {
		return nil, err
	}
	return decodeObjects(out)
}

// decodeObjects splits a multi-document manifest into objects.
func decodeObjects(manifest []byte) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(manifest)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, fmt.Errorf("decode rendered document: %w\n%s", err, doc)
		}
		if len(m) == 0 {
			continue // a template that rendered nothing
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// find returns the rendered object of kind and name, or nil.
func find(objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	return nil
}

// mustFind is find, failing t when the object is missing.
func mustFind(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	o := find(objs, kind, name)
	if o == nil {
		t.Fatalf("the chart rendered no %s %s; it rendered %s", kind, name, inventory(objs))
	}
	return o
}

// inventory lists objects as kind/name.
func inventory(objs []*unstructured.Unstructured) string {
	var s []string
	for _, o := range objs {
		s = append(s, o.GetKind()+"/"+o.GetName())
	}
	return strings.Join(s, ", ")
}
