package validation

import (
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

// ValidateMeshNetworkPolicy returns every problem of p, each with the path
// of its field, in spec order; none means the policy is valid.
func ValidateMeshNetworkPolicy(p *v1alpha1.MeshNetworkPolicy) field.ErrorList {
	var errs field.ErrorList
	if p.Namespace == "" {
		errs = append(errs, field.Required(field.NewPath("metadata", "namespace"), "a MeshNetworkPolicy is namespaced"))
	}
	if p.Specs != nil {
		errs = append(errs, field.Forbidden(field.NewPath("specs"), msgSpecs))
	}
	spec := field.NewPath("spec")
	_, serrs := ParseSelector(&p.Spec.EndpointSelector, spec.Child("endpointSelector"))
	errs = append(errs, serrs...)
	for i := range p.Spec.Ingress {
		r := &p.Spec.Ingress[i]
		path := spec.Child("ingress").Index(i)
		errs = append(errs, validatePeers(r.FromEndpoints, path.Child("fromEndpoints"))...)
		errs = append(errs, validatePortRules(r.ToPorts, path.Child("toPorts"))...)
		errs = append(errs, unsupportedIngress(&r.UnsupportedIngressFields, path)...)
	}
	for i := range p.Spec.Egress {
		r := &p.Spec.Egress[i]
		path := spec.Child("egress").Index(i)
		errs = append(errs, validatePeers(r.ToEndpoints, path.Child("toEndpoints"))...)
		errs = append(errs, validatePortRules(r.ToPorts, path.Child("toPorts"))...)
		errs = append(errs, unsupportedEgress(&r.UnsupportedEgressFields, path)...)
	}
	if len(p.Spec.Description) > maxDescription {
		errs = append(errs, field.TooLong(spec.Child("description"), "", maxDescription))
	}
	errs = append(errs, unsupportedSpec(&p.Spec.UnsupportedSpecFields, spec)...)
	return errs
}

// maxDescription is the CRD's limit on spec.description.
const maxDescription = 4096

func validatePeers(peers []metav1.LabelSelector, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i := range peers {
		_, perrs := ParseSelector(&peers[i], path.Index(i))
		errs = append(errs, perrs...)
	}
	return errs
}

func validatePortRules(rules []v1alpha1.PortRule, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	for i := range rules {
		pr := &rules[i]
		pp := path.Index(i).Child("ports")
		if len(pr.Ports) == 0 {
			errs = append(errs, field.Required(pp, "list at least one port; to allow every port, leave out toPorts"))
		}
		for j, pt := range pr.Ports {
			if _, perr := ParsePort(pt.Port, pp.Index(j).Child("port")); perr != nil {
				errs = append(errs, perr)
			}
			if perr := ValidateProtocol(pt.Protocol, pp.Index(j).Child("protocol")); perr != nil {
				errs = append(errs, perr)
			}
			if pt.EndPort != nil {
				errs = append(errs, field.Forbidden(pp.Index(j).Child("endPort"), msgEndPort))
			}
		}
		errs = append(errs, unsupportedPortRule(&pr.UnsupportedPortRuleFields, path.Index(i))...)
	}
	return errs
}

// ParsePort returns the port number a PortProtocol.Port names; "" is 0,
// every port.
func ParsePort(s string, path *field.Path) (uint16, *field.Error) {
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

// Protocols are the values of PortProtocol.Protocol; empty means ANY.
var Protocols = []v1alpha1.Protocol{v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP, v1alpha1.ProtocolSCTP, v1alpha1.ProtocolAny}

// ValidateProtocol refuses a protocol other than TCP, UDP, SCTP, ANY or
// empty.
func ValidateProtocol(p v1alpha1.Protocol, path *field.Path) *field.Error {
	switch p {
	case "", v1alpha1.ProtocolTCP, v1alpha1.ProtocolUDP, v1alpha1.ProtocolSCTP, v1alpha1.ProtocolAny:
		return nil
	}
	return field.NotSupported(path, p, Protocols)
}

// AcceptedCondition returns the Accepted condition of a policy of the given
// generation whose problems are errs (from ValidateMeshNetworkPolicy): True,
// or False with reason Invalid, every problem, and what the policy does
// until it is fixed.
func AcceptedCondition(generation int64, errs field.ErrorList) metav1.Condition {
	c := metav1.Condition{
		Type:               v1alpha1.ConditionAccepted,
		Status:             metav1.ConditionTrue,
		Reason:             v1alpha1.ReasonAccepted,
		Message:            "the policy is in force",
		ObservedGeneration: generation,
	}
	if len(errs) == 0 {
		return c
	}
	c.Status = metav1.ConditionFalse
	c.Reason = v1alpha1.ReasonInvalid
	c.Message = InvalidMessage(Detail(errs))
	return c
}

// Detail lists the problems, for messages.
func Detail(errs field.ErrorList) string {
	msgs := make([]string, 0, len(errs))
	for _, fe := range errs {
		msgs = append(msgs, fe.Error())
	}
	return strings.Join(msgs, "; ")
}

// InvalidConsequence says what an invalid policy does until it is fixed:
// it fails closed.
const InvalidConsequence = "until this is fixed the policy allows nothing, and the endpoints a valid endpointSelector selects deny cross-cluster traffic in the directions the policy has rules for"

// InvalidMessage is the Accepted=False message for the problems detail,
// cut to metav1.Condition's limit.
func InvalidMessage(detail string) string {
	msg := detail + "; " + InvalidConsequence
	if len(msg) > maxConditionMessage {
		msg = msg[:maxConditionMessage-3] + "..."
	}
	return msg
}

// maxConditionMessage is metav1.Condition's limit on Message.
const maxConditionMessage = 32768

// SetAccepted records AcceptedCondition for p's current generation in its
// status, and reports whether the status changed (and so needs writing).
func SetAccepted(p *v1alpha1.MeshNetworkPolicy, errs field.ErrorList) bool {
	return SetCondition(p, AcceptedCondition(p.Generation, errs))
}

// SetCondition records cond, which describes p's current generation, in
// p's status, and reports whether the status changed.
func SetCondition(p *v1alpha1.MeshNetworkPolicy, cond metav1.Condition) bool {
	changed := meta.SetStatusCondition(&p.Status.Conditions, cond)
	if p.Status.ObservedGeneration != p.Generation {
		p.Status.ObservedGeneration = p.Generation
		changed = true
	}
	return changed
}
