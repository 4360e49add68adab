package policy

import (
	"fmt"
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1/validation"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
)

// InvalidPolicyError says what is wrong with a MeshNetworkPolicy, one
// field error per problem, with the field's path.
type InvalidPolicyError struct {
	Namespace, Name string
	Errs            field.ErrorList
}

func (e *InvalidPolicyError) Error() string {
	return fmt.Sprintf("MeshNetworkPolicy %s/%s is invalid: %s", e.Namespace, e.Name, e.Detail())
}

// Detail lists the problems without naming the policy, for its status.
func (e *InvalidPolicyError) Detail() string { return validation.Detail(e.Errs) }

// Validate reports whether p is a policy the compiler accepts; a non-nil
// error is an *InvalidPolicyError. It is validation.ValidateMeshNetworkPolicy,
// the check behind the Accepted condition, and needs no cluster state.
func Validate(p *v1alpha1.MeshNetworkPolicy) error {
	return errOrNil(invalid(p, validation.ValidateMeshNetworkPolicy(p)))
}

func invalid(p *v1alpha1.MeshNetworkPolicy, errs field.ErrorList) *InvalidPolicyError {
	if len(errs) == 0 {
		return nil
	}
	return &InvalidPolicyError{Namespace: p.Namespace, Name: p.Name, Errs: errs}
}

// portProto is one (port, protocol) a rule allows; port 0 is any port,
// maps.ProtoAny any protocol (and then the port is 0).
type portProto struct {
	port  uint16
	proto maps.Protocol
}

func comparePortProto(a, b portProto) int {
	if a.proto != b.proto {
		return int(a.proto) - int(b.proto)
	}
	return int(a.port) - int(b.port)
}

// ruleSpec is one compiled ingress or egress rule.
type ruleSpec struct {
	dir maps.Direction
	// peers select the remote identities; deduplicated.
	peers []selectorSpec
	// anyPeer: the rule lists ports but no peers, so any remote identity
	// (the map's wildcard 0) matches.
	anyPeer bool
	ports   []portProto // never empty
}

// policySpec is a policy compiled against no identities yet.
type policySpec struct {
	namespace, name string
	generation      int64
	// subject selects the local endpoints; nil when the endpointSelector
	// is invalid, and then the policy has no effect at all.
	subject *selectorSpec
	// ingress, egress: the policy puts its endpoints into default deny in
	// that direction (it has rules for it).
	ingress, egress bool
	// rules is empty when the policy is invalid: it allows nothing.
	rules []ruleSpec
	err   *InvalidPolicyError
}

// equalEffect reports whether two compiled policies have the same effect,
// so that an update that changes nothing the compiler uses (a label, an
// annotation, a no-op reformat) costs nothing.
func (s policySpec) equalEffect(o policySpec) bool {
	if (s.subject == nil) != (o.subject == nil) || s.subject != nil && s.subject.key != o.subject.key {
		return false
	}
	if s.ingress != o.ingress || s.egress != o.egress || len(s.rules) != len(o.rules) || (s.err == nil) != (o.err == nil) {
		return false
	}
	for i := range s.rules {
		a, b := s.rules[i], o.rules[i]
		if a.dir != b.dir || a.anyPeer != b.anyPeer || !slices.Equal(a.ports, b.ports) ||
			!slices.EqualFunc(a.peers, b.peers, func(x, y selectorSpec) bool { return x.key == y.key }) {
			return false
		}
	}
	return true
}

// compilePolicy validates p and compiles it for the local cluster.
//
// An invalid policy allows nothing, but when its endpointSelector is valid
// its endpoints still go into default deny in the directions it has rules
// for, exactly as if it were valid: a mistake in a policy must never open
// traffic the policy was written to restrict. See the package doc.
func compilePolicy(p *v1alpha1.MeshNetworkPolicy, cluster string) policySpec {
	s := policySpec{namespace: p.Namespace, name: p.Name, generation: p.Generation}
	spec := field.NewPath("spec")
	subj, serrs := validation.ParseSelector(&p.Spec.EndpointSelector, spec.Child("endpointSelector"))
	if len(serrs) == 0 && p.Namespace != "" {
		sel := subjectSelector(requirementsOf(subj), p.Namespace, cluster)
		s.subject = &sel
	}
	s.ingress = len(p.Spec.Ingress) > 0
	s.egress = len(p.Spec.Egress) > 0
	if s.err = invalid(p, validation.ValidateMeshNetworkPolicy(p)); s.err != nil {
		return s
	}
	var rules []ruleSpec
	for _, r := range p.Spec.Ingress {
		rules = append(rules, compileRule(maps.Ingress, r.FromEndpoints, r.ToPorts, p.Namespace, cluster))
	}
	for _, r := range p.Spec.Egress {
		rules = append(rules, compileRule(maps.Egress, r.ToEndpoints, r.ToPorts, p.Namespace, cluster))
	}
	// A rule that can match nothing (`{}`) still counts for the direction
	// above, and is dropped here.
	s.rules = slices.DeleteFunc(rules, func(r ruleSpec) bool { return len(r.peers) == 0 && !r.anyPeer })
	return s
}

// compileRule compiles a rule of a valid policy.
func compileRule(dir maps.Direction, peers []metav1.LabelSelector, toPorts []v1alpha1.PortRule, namespace, cluster string) ruleSpec {
	r := ruleSpec{dir: dir}
	seen := make(map[string]bool, len(peers))
	for i := range peers {
		reqs, _ := validation.ParseSelector(&peers[i], nil) // valid: checked before
		sel := peerSelector(requirementsOf(reqs), namespace, cluster)
		if !seen[sel.key] {
			seen[sel.key] = true
			r.peers = append(r.peers, sel)
		}
	}
	slices.SortFunc(r.peers, func(a, b selectorSpec) int { return strings.Compare(a.key, b.key) })
	r.ports = compilePorts(toPorts)
	// Ports without peers: any peer on those ports. Neither: nothing.
	r.anyPeer = len(peers) == 0 && len(toPorts) > 0
	return r
}

// compilePorts expands the toPorts of a valid policy into (port, protocol)
// pairs. No toPorts means every port of every protocol; ANY with a port
// means TCP, UDP and SCTP on it (the map needs a protocol with a port).
// Pairs another pair of the same rule covers are dropped.
func compilePorts(rules []v1alpha1.PortRule) []portProto {
	if len(rules) == 0 {
		return []portProto{{0, maps.ProtoAny}}
	}
	var out []portProto
	for _, pr := range rules {
		for _, pt := range pr.Ports {
			port, _ := validation.ParsePort(pt.Port, nil) // valid: checked before
			switch pt.Protocol {
			case "", v1alpha1.ProtocolAny:
				if port == 0 {
					out = append(out, portProto{0, maps.ProtoAny})
				} else {
					out = append(out, portProto{port, maps.ProtoTCP}, portProto{port, maps.ProtoUDP}, portProto{port, maps.ProtoSCTP})
				}
			case v1alpha1.ProtocolTCP:
				out = append(out, portProto{port, maps.ProtoTCP})
			case v1alpha1.ProtocolUDP:
				out = append(out, portProto{port, maps.ProtoUDP})
			case v1alpha1.ProtocolSCTP:
				out = append(out, portProto{port, maps.ProtoSCTP})
			}
		}
	}
	return coverPorts(out)
}

// coverPorts sorts and deduplicates ps and drops the pairs another one
// covers: (0, any) covers everything, (0, proto) every port of proto.
func coverPorts(ps []portProto) []portProto {
	anyPort := make(map[maps.Protocol]bool)
	for _, p := range ps {
		if p.port == 0 {
			anyPort[p.proto] = true
		}
	}
	out := make([]portProto, 0, len(ps))
	for _, p := range ps {
		switch {
		case p == portProto{0, maps.ProtoAny}:
		case anyPort[maps.ProtoAny]:
			continue
		case p.port != 0 && anyPort[p.proto]:
			continue
		}
		out = append(out, p)
	}
	slices.SortFunc(out, comparePortProto)
	return slices.Compact(out)
}
