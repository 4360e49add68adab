package policy

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
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
func (e *InvalidPolicyError) Detail() string {
	msgs := make([]string, 0, len(e.Errs))
	for _, fe := range e.Errs {
		msgs = append(msgs, fe.Error())
	}
	return strings.Join(msgs, "; ")
}

// Validate reports whether p is a policy the compiler accepts; a non-nil
// error is an *InvalidPolicyError. It is the check behind the Accepted
// condition and needs no cluster state, so any component can run it.
func Validate(p *v1alpha1.MeshNetworkPolicy) error {
	if s := compilePolicy(p, ""); s.err != nil {
		return s.err
	}
	return nil
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
	var errs field.ErrorList
	if p.Namespace == "" {
		errs = append(errs, field.Required(field.NewPath("metadata", "namespace"), "a MeshNetworkPolicy is namespaced"))
	}
	spec := field.NewPath("spec")
	subj, serrs := parseSelector(&p.Spec.EndpointSelector, spec.Child("endpointSelector"))
	if len(serrs) == 0 && p.Namespace != "" {
		sel := subjectSelector(subj, p.Namespace, cluster)
		s.subject = &sel
	}
	errs = append(errs, serrs...)
	s.ingress = len(p.Spec.Ingress) > 0
	s.egress = len(p.Spec.Egress) > 0

	var rules []ruleSpec
	for i, r := range p.Spec.Ingress {
		rs, rerrs := compileRule(maps.Ingress, r.FromEndpoints, r.ToPorts, p.Namespace, cluster,
			spec.Child("ingress").Index(i), "fromEndpoints")
		errs = append(errs, rerrs...)
		rules = append(rules, rs)
	}
	for i, r := range p.Spec.Egress {
		rs, rerrs := compileRule(maps.Egress, r.ToEndpoints, r.ToPorts, p.Namespace, cluster,
			spec.Child("egress").Index(i), "toEndpoints")
		errs = append(errs, rerrs...)
		rules = append(rules, rs)
	}
	if len(errs) > 0 {
		s.err = &InvalidPolicyError{Namespace: p.Namespace, Name: p.Name, Errs: errs}
		return s
	}
	// A rule that can match nothing (`{}`) still counts for the direction
	// above, and is dropped here.
	s.rules = slices.DeleteFunc(rules, func(r ruleSpec) bool { return len(r.peers) == 0 && !r.anyPeer })
	return s
}

func compileRule(dir maps.Direction, peers []metav1.LabelSelector, toPorts []v1alpha1.PortRule, namespace, cluster string, path *field.Path, peersField string) (ruleSpec, field.ErrorList) {
	r := ruleSpec{dir: dir}
	var errs field.ErrorList
	seen := make(map[string]bool, len(peers))
	for i := range peers {
		reqs, perrs := parseSelector(&peers[i], path.Child(peersField).Index(i))
		if len(perrs) > 0 {
			errs = append(errs, perrs...)
			continue
		}
		sel := peerSelector(reqs, namespace, cluster)
		if !seen[sel.key] {
			seen[sel.key] = true
			r.peers = append(r.peers, sel)
		}
	}
	slices.SortFunc(r.peers, func(a, b selectorSpec) int { return strings.Compare(a.key, b.key) })
	ports, perrs := compilePorts(toPorts, path.Child("toPorts"))
	errs = append(errs, perrs...)
	r.ports = ports
	// Ports without peers: any peer on those ports. Neither: nothing.
	r.anyPeer = len(peers) == 0 && len(toPorts) > 0
	return r, errs
}

// compilePorts expands toPorts into (port, protocol) pairs. No toPorts means
// every port of every protocol; ANY with a port means TCP, UDP and SCTP on
// it (the map needs a protocol with a port). Pairs another pair of the same
// rule covers are dropped.
func compilePorts(rules []v1alpha1.PortRule, path *field.Path) ([]portProto, field.ErrorList) {
	if len(rules) == 0 {
		return []portProto{{0, maps.ProtoAny}}, nil
	}
	var errs field.ErrorList
	var out []portProto
	for i, pr := range rules {
		pp := path.Index(i).Child("ports")
		if len(pr.Ports) == 0 {
			errs = append(errs, field.Required(pp, "list at least one port; to allow every port, leave out toPorts"))
		}
		for j, pt := range pr.Ports {
			port, perr := parsePort(pt.Port, pp.Index(j).Child("port"))
			if perr != nil {
				errs = append(errs, perr)
			}
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
			default:
				errs = append(errs, field.NotSupported(pp.Index(j).Child("protocol"), pt.Protocol,
					[]v1alpha1.Protocol{v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP, v1alpha1.ProtocolSCTP, v1alpha1.ProtocolAny}))
			}
		}
	}
	return coverPorts(out), errs
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

func parsePort(s string, path *field.Path) (uint16, *field.Error) {
	if s == "" {
		return 0, nil
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, field.Invalid(path, s, "named ports are not supported: give the port number (1-65535)")
		}
	}
	n, err := strconv.ParseUint(s, 10, 16)
	if err != nil || n == 0 {
		return 0, field.Invalid(path, s, "port must be a number from 1 to 65535")
	}
	return uint16(n), nil
}
