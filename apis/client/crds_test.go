package client

import (
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

// TestCRDsDecode checks the embedded manifests are the two isthmus.dev
// CRDs with the scope, names and subresources the API package promises.
func TestCRDsDecode(t *testing.T) {
	crds, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		kind  string
		scope apiextensionsv1.ResourceScope
		short string
	}{
		v1alpha1.ResourceMeshAgents + "." + v1alpha1.GroupName:          {v1alpha1.KindMeshAgent, apiextensionsv1.ClusterScoped, "ma"},
		v1alpha1.ResourceMeshNetworkPolicies + "." + v1alpha1.GroupName: {v1alpha1.KindMeshNetworkPolicy, apiextensionsv1.NamespaceScoped, "mnp"},
	}
	if len(crds) != len(want) {
		t.Fatalf("got %d CRDs, want %d", len(crds), len(want))
	}
	for _, crd := range crds {
		w, ok := want[crd.Name]
		if !ok {
			t.Errorf("unexpected CRD %s", crd.Name)
			continue
		}
		if crd.Spec.Group != v1alpha1.GroupName || crd.Spec.Names.Kind != w.kind || crd.Spec.Scope != w.scope {
			t.Errorf("CRD %s: group %s kind %s scope %s", crd.Name, crd.Spec.Group, crd.Spec.Names.Kind, crd.Spec.Scope)
		}
		if len(crd.Spec.Names.ShortNames) != 1 || crd.Spec.Names.ShortNames[0] != w.short {
			t.Errorf("CRD %s: short names %v, want [%s]", crd.Name, crd.Spec.Names.ShortNames, w.short)
		}
		if len(crd.Spec.Versions) != 1 {
			t.Fatalf("CRD %s: %d versions", crd.Name, len(crd.Spec.Versions))
		}
		v := crd.Spec.Versions[0]
		if v.Name != v1alpha1.SchemeGroupVersion.Version || !v.Served || !v.Storage {
			t.Errorf("CRD %s: version %s served %v storage %v", crd.Name, v.Name, v.Served, v.Storage)
		}
		if v.Subresources == nil || v.Subresources.Status == nil {
			t.Errorf("CRD %s has no status subresource", crd.Name)
		}
		if len(v.AdditionalPrinterColumns) < 2 {
			t.Errorf("CRD %s has %d printer columns", crd.Name, len(v.AdditionalPrinterColumns))
		}
	}
}
