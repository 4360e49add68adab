package policy

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// operator is a selector requirement's relation between a label and values.
type operator uint8

const (
	opIn operator = iota
	opNotIn
	opExists
	opDoesNotExist
)

func (o operator) String() string {
	switch o {
	case opIn:
		return "In"
	case opNotIn:
		return "NotIn"
	case opExists:
		return "Exists"
	case opDoesNotExist:
		return "DoesNotExist"
	}
	return fmt.Sprintf("operator(%d)", uint8(o))
}

var supportedOperators = []string{
	string(metav1.LabelSelectorOpIn), string(metav1.LabelSelectorOpNotIn),
	string(metav1.LabelSelectorOpExists), string(metav1.LabelSelectorOpDoesNotExist),
}

// requirement is one term of a selector, with Kubernetes label selector
// semantics: NotIn and DoesNotExist match labels that are absent.
type requirement struct {
	key    string
	op     operator
	values []string // sorted, no duplicates; empty for Exists, DoesNotExist
}

func (r requirement) matches(labels map[string]string) bool {
	v, ok := labels[r.key]
	switch r.op {
	case opIn:
		return ok && slices.Contains(r.values, v)
	case opNotIn:
		return !ok || !slices.Contains(r.values, v)
	case opExists:
		return ok
	case opDoesNotExist:
		return !ok
	}
	return false
}

func compareRequirements(a, b requirement) int {
	if c := strings.Compare(a.key, b.key); c != 0 {
		return c
	}
	if a.op != b.op {
		return int(a.op) - int(b.op)
	}
	return slices.Compare(a.values, b.values)
}

// selectorSpec is a validated selector with its defaults applied, in
// canonical form: equal selections have equal keys, so policies share them.
type selectorSpec struct {
	reqs []requirement // sorted, no duplicates
	key  string
}

func newSelectorSpec(reqs []requirement) selectorSpec {
	reqs = slices.Clone(reqs)
	slices.SortFunc(reqs, compareRequirements)
	reqs = slices.CompactFunc(reqs, func(a, b requirement) bool { return compareRequirements(a, b) == 0 })
	var b strings.Builder
	for _, r := range reqs {
		// Keys and values cannot hold control characters, so these
		// separators keep the form unambiguous.
		b.WriteString(r.key)
		b.WriteByte(0)
		b.WriteString(r.op.String())
		for _, v := range r.values {
			b.WriteByte(1)
			b.WriteString(v)
		}
		b.WriteByte(2)
	}
	return selectorSpec{reqs: reqs, key: b.String()}
}

func (s selectorSpec) matches(labels map[string]string) bool {
	for _, r := range s.reqs {
		if !r.matches(labels) {
			return false
		}
	}
	return true
}

// String renders the selector for humans, e.g. in test failures.
func (s selectorSpec) String() string {
	parts := make([]string, 0, len(s.reqs))
	for _, r := range s.reqs {
		switch r.op {
		case opExists:
			parts = append(parts, r.key)
		case opDoesNotExist:
			parts = append(parts, "!"+r.key)
		default:
			parts = append(parts, fmt.Sprintf("%s %s (%s)", r.key, r.op, strings.Join(r.values, ",")))
		}
	}
	return "{" + strings.Join(parts, ", ") + "}"
}

// parseSelector validates a label selector and returns its requirements.
// Keys may carry the source prefix "k8s:" or "any:" (CiliumNetworkPolicy
// spelling); every security label the mesh has comes from source k8s, so
// both mean the bare key.
func parseSelector(sel *metav1.LabelSelector, path *field.Path) ([]requirement, field.ErrorList) {
	var errs field.ErrorList
	reqs := make([]requirement, 0, len(sel.MatchLabels)+len(sel.MatchExpressions))
	for _, k := range sortedKeys(sel.MatchLabels) {
		p := path.Child("matchLabels").Key(k)
		key, kerrs := parseLabelKey(k, p)
		errs = append(errs, kerrs...)
		v := sel.MatchLabels[k]
		errs = append(errs, validateLabelValue(v, p)...)
		reqs = append(reqs, requirement{key: key, op: opIn, values: []string{v}})
	}
	for i, e := range sel.MatchExpressions {
		p := path.Child("matchExpressions").Index(i)
		key, kerrs := parseLabelKey(e.Key, p.Child("key"))
		errs = append(errs, kerrs...)
		r := requirement{key: key}
		switch e.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			r.op = opIn
			if e.Operator == metav1.LabelSelectorOpNotIn {
				r.op = opNotIn
			}
			if len(e.Values) == 0 {
				errs = append(errs, field.Required(p.Child("values"), fmt.Sprintf("operator %s needs at least one value", e.Operator)))
			}
			for j, v := range e.Values {
				errs = append(errs, validateLabelValue(v, p.Child("values").Index(j))...)
			}
			r.values = slices.Compact(slices.Sorted(slices.Values(e.Values)))
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			r.op = opExists
			if e.Operator == metav1.LabelSelectorOpDoesNotExist {
				r.op = opDoesNotExist
			}
			if len(e.Values) > 0 {
				errs = append(errs, field.Forbidden(p.Child("values"), fmt.Sprintf("operator %s takes no values", e.Operator)))
			}
		default:
			errs = append(errs, field.NotSupported(p.Child("operator"), e.Operator, supportedOperators))
		}
		reqs = append(reqs, r)
	}
	return reqs, errs
}

// maxLabelKeyLength bounds a label key: a DNS subdomain prefix, '/', a name.
const maxLabelKeyLength = 253 + 1 + 63

func parseLabelKey(k string, path *field.Path) (string, field.ErrorList) {
	key := k
	if src, rest, ok := strings.Cut(k, ":"); ok {
		if src != protocol.SourceK8s && src != "any" {
			return "", field.ErrorList{field.Invalid(path, k, fmt.Sprintf(
				"label source %q is not supported: MeshNetworkPolicy selects Kubernetes labels; write the key bare or with the prefix k8s:", src))}
		}
		key = rest
	}
	// Not the strict Kubernetes label key syntax: keys such as
	// io.cilium.k8s.namespace.labels.<key> grow past its 63-character name
	// limit. Only characters no label key can hold are refused.
	switch {
	case key == "":
		return "", field.ErrorList{field.Invalid(path, k, "label key is empty")}
	case len(key) > maxLabelKeyLength:
		return "", field.ErrorList{field.TooLong(path, k, maxLabelKeyLength)}
	}
	for _, c := range key {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '/') {
			return "", field.ErrorList{field.Invalid(path, k, fmt.Sprintf(
				"label key holds %q; a key consists of letters, digits, '-', '_', '.' and '/'", c))}
		}
	}
	return key, nil
}

func validateLabelValue(v string, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range content.IsLabelValue(v) {
		errs = append(errs, field.Invalid(path, v, msg))
	}
	return errs
}

// peerSelector applies the peer defaults: without a cluster requirement a
// selector matches the local cluster only; without a requirement on the
// namespace, or on a namespace label (io.cilium.k8s.namespace.labels.*, as
// in CiliumNetworkPolicy), the policy's namespace only.
func peerSelector(reqs []requirement, namespace, cluster string) selectorSpec {
	var hasCluster, hasNamespace bool
	for _, r := range reqs {
		switch {
		case r.key == protocol.LabelPolicyCluster:
			hasCluster = true
		case r.key == protocol.LabelPodNamespace, strings.HasPrefix(r.key, protocol.LabelNamespaceLabelPrefix):
			hasNamespace = true
		}
	}
	out := slices.Clone(reqs)
	if !hasCluster {
		out = append(out, requirement{key: protocol.LabelPolicyCluster, op: opIn, values: []string{cluster}})
	}
	if !hasNamespace {
		out = append(out, requirement{key: protocol.LabelPodNamespace, op: opIn, values: []string{namespace}})
	}
	return newSelectorSpec(out)
}

// subjectSelector confines an endpointSelector to the local cluster and the
// policy's namespace, whatever it says about either.
func subjectSelector(reqs []requirement, namespace, cluster string) selectorSpec {
	reqs = append(slices.Clone(reqs),
		requirement{key: protocol.LabelPolicyCluster, op: opIn, values: []string{cluster}},
		requirement{key: protocol.LabelPodNamespace, op: opIn, values: []string{namespace}},
	)
	return newSelectorSpec(reqs)
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
