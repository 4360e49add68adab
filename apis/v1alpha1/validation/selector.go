package validation

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/validate/content"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Requirement is one term of a validated label selector.
type Requirement struct {
	// Key is the label key without its source prefix ("k8s:", "any:").
	Key string
	// Operator is In, NotIn, Exists or DoesNotExist; matchLabels give In.
	Operator metav1.LabelSelectorOperator
	// Values are sorted and without duplicates; empty for Exists and
	// DoesNotExist.
	Values []string
}

// SupportedOperators are the selector operators MeshNetworkPolicy accepts.
var SupportedOperators = []metav1.LabelSelectorOperator{
	metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn,
	metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist,
}

// labelSourceK8s is the source of every security label the mesh has
// (internal/protocol.SourceK8s); "any" matches every source.
const (
	labelSourceK8s = "k8s"
	labelSourceAny = "any"
)

// ParseSelector validates a label selector over security labels and returns
// its requirements, matchLabels first (by key), then matchExpressions in
// order. Keys may carry the source prefix "k8s:" or "any:"
// (CiliumNetworkPolicy spelling); every security label the mesh has comes
// from source k8s, so both mean the bare key. On errors the requirements
// are incomplete and must not be used.
func ParseSelector(sel *metav1.LabelSelector, path *field.Path) ([]Requirement, field.ErrorList) {
	var errs field.ErrorList
	reqs := make([]Requirement, 0, len(sel.MatchLabels)+len(sel.MatchExpressions))
	keys := make([]string, 0, len(sel.MatchLabels))
	for k := range sel.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		p := path.Child("matchLabels").Key(k)
		key, kerrs := parseLabelKey(k, p)
		errs = append(errs, kerrs...)
		v := sel.MatchLabels[k]
		errs = append(errs, validateLabelValue(v, p)...)
		reqs = append(reqs, Requirement{Key: key, Operator: metav1.LabelSelectorOpIn, Values: []string{v}})
	}
	for i, e := range sel.MatchExpressions {
		p := path.Child("matchExpressions").Index(i)
		key, kerrs := parseLabelKey(e.Key, p.Child("key"))
		errs = append(errs, kerrs...)
		r := Requirement{Key: key, Operator: e.Operator}
		switch e.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn:
			if len(e.Values) == 0 {
				errs = append(errs, field.Required(p.Child("values"), fmt.Sprintf("operator %s needs at least one value", e.Operator)))
			}
			for j, v := range e.Values {
				errs = append(errs, validateLabelValue(v, p.Child("values").Index(j))...)
			}
			r.Values = slices.Compact(slices.Sorted(slices.Values(e.Values)))
		case metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
			if len(e.Values) > 0 {
				errs = append(errs, field.Forbidden(p.Child("values"), fmt.Sprintf("operator %s takes no values", e.Operator)))
			}
		default:
			errs = append(errs, field.NotSupported(p.Child("operator"), e.Operator, SupportedOperators))
		}
		reqs = append(reqs, r)
	}
	return reqs, errs
}

// MaxLabelKeyLength bounds a label key: a DNS subdomain prefix, '/', a
// name.
const MaxLabelKeyLength = 253 + 1 + 63

func parseLabelKey(k string, path *field.Path) (string, field.ErrorList) {
	key := k
	if src, rest, ok := strings.Cut(k, ":"); ok {
		if src != labelSourceK8s && src != labelSourceAny {
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
	case len(key) > MaxLabelKeyLength:
		return "", field.ErrorList{field.TooLong(path, k, MaxLabelKeyLength)}
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
