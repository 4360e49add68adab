package validation_test

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1/validation"
	"github.com/isthmus-mesh/isthmus/charts"
)

// refusal is a CEL rule of the CRD that refuses one field: `!has(self.X)`
// on the object at path (property names, "[*]" for list items).
type refusal struct {
	path    []string
	field   string
	message string
	schema  apiextensionsv1.JSONSchemaProps // of the refused field
}

var hasRule = regexp.MustCompile(`^!has\(self\.([A-Za-z]+)\)$`)

func crdRefusals(t *testing.T) []refusal {
	t.Helper()
	var crd apiextensionsv1.CustomResourceDefinition
	for _, f := range charts.CRDs() {
		if strings.Contains(f.Name, v1alpha1.ResourceMeshNetworkPolicies) {
			if err := yaml.UnmarshalStrict(f.YAML, &crd); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(crd.Spec.Versions) != 1 {
		t.Fatalf("CRD %s has %d versions", crd.Name, len(crd.Spec.Versions))
	}
	var out []refusal
	var walk func(s *apiextensionsv1.JSONSchemaProps, path []string)
	walk = func(s *apiextensionsv1.JSONSchemaProps, path []string) {
		for _, r := range s.XValidations {
			if m := hasRule.FindStringSubmatch(r.Rule); m != nil {
				// The API server then names the field as validation does.
				if r.FieldPath != "."+m[1] || r.Reason == nil || *r.Reason != apiextensionsv1.FieldValueForbidden {
					t.Errorf("rule %s at %v: fieldPath %q, reason %v; want .%s and FieldValueForbidden", r.Rule, path, r.FieldPath, r.Reason, m[1])
				}
				out = append(out, refusal{path: path, field: m[1], message: r.Message, schema: s.Properties[m[1]]})
			}
		}
		for name, p := range s.Properties {
			walk(&p, append(append([]string(nil), path...), name))
		}
		if s.Items != nil && s.Items.Schema != nil {
			walk(s.Items.Schema, append(append([]string(nil), path...), "[*]"))
		}
	}
	walk(crd.Spec.Versions[0].Schema.OpenAPIV3Schema, nil)
	return out
}

// basePolicy is a valid policy with one ingress and one egress rule, each
// with one port, so that every object that can hold a refused field
// exists.
const basePolicy = `{"metadata":{"namespace":"shop","name":"p"},"spec":{"endpointSelector":{},
 "ingress":[{"fromEndpoints":[{}],"toPorts":[{"ports":[{"port":"80"}]}]}],
 "egress":[{"toEndpoints":[{}],"toPorts":[{"ports":[{"port":"80"}]}]}]}}`

// TestUnsupportedFieldsMatchCRD checks every CiliumNetworkPolicy field the
// CRD refuses with a CEL rule: the Go types declare it (it survives
// decoding), ValidateMeshNetworkPolicy refuses it at the same path with the
// same message, and nothing else is wrong with the policy.
func TestUnsupportedFieldsMatchCRD(t *testing.T) {
	refusals := crdRefusals(t)
	if len(refusals) < 30 {
		t.Fatalf("found %d field refusals in the CRD; the schema walk is broken", len(refusals))
	}
	for _, r := range refusals {
		name := strings.Join(append(append([]string(nil), r.path...), r.field), ".")
		t.Run(name, func(t *testing.T) {
			var obj map[string]any
			if err := json.Unmarshal([]byte(basePolicy), &obj); err != nil {
				t.Fatal(err)
			}
			var at any = obj
			want := field.NewPath("")
			first := true
			for _, step := range r.path {
				if step == "[*]" {
					at = at.([]any)[0]
					want = want.Index(0)
					continue
				}
				at = at.(map[string]any)[step]
				if first {
					want, first = field.NewPath(step), false
				} else {
					want = want.Child(step)
				}
			}
			if first {
				want = field.NewPath(r.field)
			} else {
				want = want.Child(r.field)
			}
			at.(map[string]any)[r.field] = sampleValue(t, r.schema)
			raw, _ := json.Marshal(obj)
			var p v1alpha1.MeshNetworkPolicy
			if err := json.Unmarshal(raw, &p); err != nil {
				t.Fatalf("decode %s: %v", raw, err)
			}
			errs := validation.ValidateMeshNetworkPolicy(&p)
			if len(errs) != 1 {
				t.Fatalf("ValidateMeshNetworkPolicy = %v, want one error at %s (is the field declared in the Go types?)", errs, want)
			}
			e := errs[0]
			if e.Type != field.ErrorTypeForbidden || e.Field != want.String() || e.Detail != r.message {
				t.Errorf("error %q (field %s, detail %q), want Forbidden at %s with the CRD's message %q", e, e.Field, e.Detail, want, r.message)
			}
		})
	}
}

// sampleValue returns a value of a field's CRD schema type, as a Cilium
// policy would carry it.
func sampleValue(t *testing.T, s apiextensionsv1.JSONSchemaProps) any {
	switch s.Type {
	case "array":
		if s.Items != nil && s.Items.Schema != nil && s.Items.Schema.Type == "string" {
			return []any{"10.0.0.0/8"}
		}
		return []any{map[string]any{"some": "thing"}}
	case "object":
		return map[string]any{"some": "thing"}
	case "integer":
		return 8080
	}
	t.Fatalf("refused field has schema type %q", s.Type)
	return nil
}

// TestValidPolicies checks that what the compiler's tests treat as valid
// passes, including the CiliumNetworkPolicy spellings it accepts.
func TestValidPolicies(t *testing.T) {
	for _, js := range []string{
		basePolicy,
		`{"metadata":{"namespace":"shop","name":"p"},"spec":{"endpointSelector":{"matchLabels":{"k8s:app":"backend"}},"description":"carried over",
		  "ingress":[{"fromEndpoints":[{"matchLabels":{"any:io.cilium.k8s.policy.cluster":"c2"},"matchExpressions":[{"key":"io.cilium.k8s.namespace.labels.team","operator":"Exists"}]}],
		  "toPorts":[{"ports":[{"port":"8080","protocol":"TCP"},{"protocol":"UDP"}]}]}],"egress":[{}]}}`,
	} {
		var p v1alpha1.MeshNetworkPolicy
		if err := json.Unmarshal([]byte(js), &p); err != nil {
			t.Fatal(err)
		}
		if errs := validation.ValidateMeshNetworkPolicy(&p); len(errs) != 0 {
			t.Errorf("ValidateMeshNetworkPolicy(%s) = %v", js, errs)
		}
	}
}

// TestAcceptedCondition checks the condition's form and that SetAccepted
// reports only real changes.
func TestAcceptedCondition(t *testing.T) {
	var p v1alpha1.MeshNetworkPolicy
	if err := json.Unmarshal([]byte(basePolicy), &p); err != nil {
		t.Fatal(err)
	}
	p.Generation = 2
	if !validation.SetAccepted(&p, validation.ValidateMeshNetworkPolicy(&p)) {
		t.Fatal("first SetAccepted reported no change")
	}
	if c := p.Status.Conditions; len(c) != 1 || c[0].Status != "True" || c[0].ObservedGeneration != 2 || p.Status.ObservedGeneration != 2 {
		t.Errorf("status %+v", p.Status)
	}
	if validation.SetAccepted(&p, nil) {
		t.Error("SetAccepted with nothing new reported a change")
	}
	p.Generation = 3
	p.Spec.Ingress[0].FromCIDR = []string{"0.0.0.0/0"}
	errs := validation.ValidateMeshNetworkPolicy(&p)
	if !validation.SetAccepted(&p, errs) {
		t.Fatal("SetAccepted after a bad update reported no change")
	}
	c := p.Status.Conditions[0]
	want := fmt.Sprintf("spec.ingress[0].fromCIDR: Forbidden: fromCIDR is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with fromEndpoints; %s", validation.InvalidConsequence)
	if c.Status != "False" || c.Reason != v1alpha1.ReasonInvalid || c.Message != want || c.ObservedGeneration != 3 {
		t.Errorf("condition %+v, want message %q", c, want)
	}
	long := make(field.ErrorList, 0, 2000)
	for i := range 2000 {
		long = append(long, field.Invalid(field.NewPath("spec", "ingress").Index(i), "x", strings.Repeat("y", 20)))
	}
	if m := validation.AcceptedCondition(1, long).Message; len(m) != 32768 || !strings.HasSuffix(m, "...") {
		t.Errorf("a long message is %d bytes, want it cut to 32768", len(m))
	}
}
