package certs_test

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) { testenv.Main(m, kube) }

// TestCertManagerResourcesApply installs cert-manager's own CRDs (shipped
// in the pinned module) into a real kube-apiserver and creates the
// resources with strict field validation: the apiserver checks them against
// cert-manager's OpenAPI schemas and validation rules.
func TestCertManagerResourcesApply(t *testing.T) {
	k := kube.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dyn, err := dynamic.NewForConfig(k.Config)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/cert-manager/cert-manager").Output()
	if err != nil {
		t.Fatalf("locate the cert-manager module: %v", err)
	}
	crdDir := filepath.Join(strings.TrimSpace(string(out)), "deploy", "crds")
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, name := range []string{"cert-manager.io_issuers.yaml", "cert-manager.io_certificates.yaml"} {
		data, err := os.ReadFile(filepath.Join(crdDir, name))
		if err != nil {
			t.Fatal(err)
		}
		crd := &unstructured.Unstructured{}
		if err := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096).Decode(&crd.Object); err != nil {
			t.Fatalf("decode %s: %v", name, err)
		}
		if _, err := dyn.Resource(crdGVR).Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("install %s: %v", name, err)
		}
		waitEstablished(t, ctx, dyn, crdGVR, crd.GetName())
	}

	r, err := certs.NewCertManagerResources(certs.CertManagerConfig{
		Cluster:        "c1",
		Namespace:      k.Namespace,
		ServerDNSNames: []string{"isthmus-apiserver." + k.Namespace + ".svc"},
		ServerIPs:      []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		BootstrapCA:    true,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range r.Objects() {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
		if err != nil {
			t.Fatal(err)
		}
		obj := &unstructured.Unstructured{Object: u}
		gvk := obj.GroupVersionKind()
		gvr := schema.GroupVersionResource{Group: gvk.Group, Version: gvk.Version, Resource: strings.ToLower(gvk.Kind) + "s"}
		created, err := dyn.Resource(gvr).Namespace(k.Namespace).Create(ctx, obj, metav1.CreateOptions{FieldValidation: "Strict"})
		if err != nil {
			t.Fatalf("create %s %s: %v", gvk.Kind, obj.GetName(), err)
		}
		// What the apiserver stored is what was sent.
		spec, _, _ := unstructured.NestedMap(created.Object, "spec")
		want, _, _ := unstructured.NestedMap(obj.Object, "spec")
		if !equalJSON(t, spec, want) {
			t.Errorf("%s %s stored spec %v, sent %v", gvk.Kind, obj.GetName(), spec, want)
		}
	}

	// The schema is enforced: an unknown usage is refused.
	bad := r.Admin.DeepCopy()
	bad.Name = "bad"
	bad.Spec.Usages = append(bad.Spec.Usages, "teleport")
	u, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(bad)
	if _, err := dyn.Resource(schema.GroupVersionResource{Group: "cert-manager.io", Version: "v1", Resource: "certificates"}).Namespace(k.Namespace).
		Create(ctx, &unstructured.Unstructured{Object: u}, metav1.CreateOptions{FieldValidation: "Strict"}); err == nil {
		t.Error("certificate with an unknown usage accepted: the CRD schema is not in force")
	}
}

func waitEstablished(t *testing.T, ctx context.Context, dyn dynamic.Interface, gvr schema.GroupVersionResource, name string) {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		crd, err := dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]any)
				if m["type"] == "Established" && m["status"] == "True" {
					return
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("CRD %s not established: %v", name, err)
		case <-tick.C:
		}
	}
}

func equalJSON(t *testing.T, a, b map[string]any) bool {
	t.Helper()
	ua := &unstructured.Unstructured{Object: map[string]any{"x": a}}
	ub := &unstructured.Unstructured{Object: map[string]any{"x": b}}
	ja, err1 := ua.MarshalJSON()
	jb, err2 := ub.MarshalJSON()
	return err1 == nil && err2 == nil && bytes.Equal(ja, jb)
}
