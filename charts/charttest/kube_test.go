package charttest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) {
	code := testenv.Run(m, kube)
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// fieldManager owns what the tests write.
const fieldManager = "charttest"

// cluster is the shared kube-apiserver as the tests use it: the chart's
// objects live in isthmus-system, which the binaries hard-code, so tests
// that write there do not run in parallel and remove what they wrote.
type cluster struct {
	*testenv.Kube
	dyn    dynamic.Interface
	mapper meta.ResettableRESTMapper
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	k := kube.Kube(t)
	dyn, err := dynamic.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{Kube: k, dyn: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.Namespace}}
	if _, err := k.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return c
}

// resource maps an object to its API resource, rediscovering once when the
// kind is new (a CRD installed since).
func (c *cluster) resource(o *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := o.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		c.mapper.Reset()
		m, err = c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", gvk, o.GetName(), err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dyn.Resource(m.Resource).Namespace(o.GetNamespace()), nil
	}
	return c.dyn.Resource(m.Resource), nil
}

// apply server-side applies o with strict field validation: an unknown or
// duplicate field, a value of the wrong type or one the API's validation
// refuses is an error. dryRun leaves the cluster unchanged.
func (c *cluster) apply(ctx context.Context, o *unstructured.Unstructured, dryRun bool) error {
	ri, err := c.resource(o)
	if err != nil {
		return err
	}
	data, err := json.Marshal(o.Object)
	if err != nil {
		return err
	}
	opts := metav1.PatchOptions{FieldManager: fieldManager, Force: ptr.To(true), FieldValidation: metav1.FieldValidationStrict}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	if _, err := ri.Patch(ctx, o.GetName(), types.ApplyPatchType, data, opts); err != nil {
		return fmt.Errorf("apply %s %s: %w", o.GetKind(), o.GetName(), err)
	}
	return nil
}

// install applies objs for real, in order, and deletes them when t ends.
func (c *cluster) install(t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, o := range objs {
		if o.GetKind() == "CustomResourceDefinition" {
			continue // shared by the tests; meshops.Enable installs them
		}
		if err := c.apply(ctx, o, false); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.delete(t, o) })
	}
}

// delete removes o, at once (no kubelet runs to finish pods gracefully).
func (c *cluster) delete(t *testing.T, o *unstructured.Unstructured) {
	t.Helper()
	ri, err := c.resource(o)
	if err != nil {
		t.Error(err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// No controllers run to finish a deletion (e.g. a PVC's protection
	// finalizer); drop finalizers, as they would.
	_, err = ri.Patch(ctx, o.GetName(), types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("clear the finalizers of %s %s: %v", o.GetKind(), o.GetName(), err)
	}
	err = ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("delete %s %s: %v", o.GetKind(), o.GetName(), err)
	}
}

// cleanMeshNamespace removes, when t ends, the ConfigMaps, Secrets and
// pods in isthmus-system, which `isthmus enable`, the apiserver and the
// tests create there.
func (c *cluster) cleanMeshNamespace(t *testing.T) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		core := c.Client.CoreV1()
		all := metav1.ListOptions{}
		now := metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}
		for what, err := range map[string]error{
			"ConfigMaps": core.ConfigMaps(meshconfig.Namespace).DeleteCollection(ctx, now, all),
			"Secrets":    core.Secrets(meshconfig.Namespace).DeleteCollection(ctx, now, all),
			"Pods":       core.Pods(meshconfig.Namespace).DeleteCollection(ctx, now, all),
		} {
			if err != nil {
				t.Errorf("clean up the %s of %s: %v", what, meshconfig.Namespace, err)
			}
		}
	})
}

// installCertManagerCRDs installs cert-manager's Issuer and Certificate
// CRDs, shipped in the pinned cert-manager module, so that the chart's
// cert-manager objects are checked against cert-manager's own schemas.
func (c *cluster) installCertManagerCRDs(t *testing.T) {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cert-manager/cert-manager").Output()
	if err != nil {
		t.Fatalf("locate the cert-manager module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "deploy", "crds")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, name := range []string{"cert-manager.io_issuers.yaml", "cert-manager.io_certificates.yaml"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		crd := &unstructured.Unstructured{}
		if err := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096).Decode(&crd.Object); err != nil {
			t.Fatalf("decode %s: %v", name, err)
		}
		if _, err := c.dyn.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("install %s: %v", name, err)
		}
		c.waitEstablished(t, ctx, crd.GetName())
	}
}

func (c *cluster) waitEstablished(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	err := waitFor(ctx, 100*time.Millisecond, func() (bool, error) {
		got, err := c.dyn.Resource(crdGVR).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		conds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
		for _, cond := range conds {
			m, _ := cond.(map[string]any)
			if m["type"] == "Established" && m["status"] == "True" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("CRD %s not established: %v", name, err)
	}
}

// restConfigFor is a client config authenticating with a bearer token
// (a service account's), trusting the test cluster's CA.
func (c *cluster) restConfigFor(token string) *rest.Config {
	return &rest.Config{
		Host:            c.Config.Host,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: c.ControlPlane.CACertPEM()},
	}
}

// waitFor polls cond every interval until it is true, returns an error,
// or ctx ends.
func waitFor(ctx context.Context, interval time.Duration, cond func() (bool, error)) error {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var last error
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%w (last error: %v)", ctx.Err(), last)
			}
			return ctx.Err()
		case <-ticker.C:
		}
	}
}
