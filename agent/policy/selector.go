package policy

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1/validation"
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

// requirementsOf converts validated selector requirements.
func requirementsOf(vs []validation.Requirement) []requirement {
	reqs := make([]requirement, 0, len(vs))
	for _, v := range vs {
		r := requirement{key: v.Key, values: v.Values}
		switch v.Operator {
		case metav1.LabelSelectorOpIn:
			r.op = opIn
		case metav1.LabelSelectorOpNotIn:
			r.op = opNotIn
		case metav1.LabelSelectorOpExists:
			r.op = opExists
		case metav1.LabelSelectorOpDoesNotExist:
			r.op = opDoesNotExist
		default:
			panic("policy: unvalidated selector operator " + string(v.Operator))
		}
		reqs = append(reqs, r)
	}
	return reqs
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
