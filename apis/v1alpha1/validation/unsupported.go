package validation

import (
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
)

// The messages for the CiliumNetworkPolicy fields MeshNetworkPolicy does
// not support. They are the messages of the CRD's CEL rules
// (apis/v1alpha1), word for word; a test keeps the two in step.
const (
	msgSpecs             = "specs is not supported: write one MeshNetworkPolicy per rule, each with spec"
	msgIngressDeny       = "ingressDeny is not supported: MeshNetworkPolicy only allows traffic; once a policy with ingress rules selects an endpoint, cross-cluster ingress no rule allows is denied"
	msgEgressDeny        = "egressDeny is not supported: MeshNetworkPolicy only allows traffic; once a policy with egress rules selects an endpoint, cross-cluster egress no rule allows is denied"
	msgNodeSelector      = "nodeSelector is not supported: MeshNetworkPolicy applies to the pods endpointSelector selects, not to nodes"
	msgEnableDefaultDeny = "enableDefaultDeny is not supported: a policy with ingress (egress) rules always puts the endpoints it selects into default deny for that direction"
	msgLabels            = "labels is not supported: put labels in metadata.labels"
	msgLog               = "log is not supported: flow events name the policy that decided"

	peersOnly      = " is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select peers with "
	msgICMPs       = "icmps is not supported: MeshNetworkPolicy matches TCP, UDP and SCTP ports"
	msgAuth        = "authentication is not supported: cross-cluster traffic is encrypted node to node by WireGuard; there is no per-workload authentication"
	msgFromReq     = "fromRequires is not supported: add its requirements to each fromEndpoints selector instead"
	msgToReq       = "toRequires is not supported: add its requirements to each toEndpoints selector instead"
	msgToServices  = "toServices is not supported: MeshNetworkPolicy governs traffic between endpoints of the mesh, selected by their labels; select the service's pods with toEndpoints"
	msgL7Rules     = "rules (L7) is not supported: MeshNetworkPolicy allows whole ports; remove the rules, knowing every request on the port is then allowed"
	onlyL3L4       = " is not supported: MeshNetworkPolicy is L3/L4 only"
	msgEndPort     = "endPort is not supported: list each port of the range"
	fromEndpoints  = "fromEndpoints"
	toEndpointsArg = "toEndpoints"
)

// unsupported is one CiliumNetworkPolicy field and whether it is present.
type unsupported struct {
	name string
	set  bool
	msg  string
}

func refuse(path *field.Path, fields ...unsupported) field.ErrorList {
	var errs field.ErrorList
	for _, f := range fields {
		if f.set {
			errs = append(errs, field.Forbidden(path.Child(f.name), f.msg))
		}
	}
	return errs
}

func unsupportedSpec(u *v1alpha1.UnsupportedSpecFields, path *field.Path) field.ErrorList {
	return refuse(path,
		unsupported{"ingressDeny", u.IngressDeny != nil, msgIngressDeny},
		unsupported{"egressDeny", u.EgressDeny != nil, msgEgressDeny},
		unsupported{"nodeSelector", u.NodeSelector != nil, msgNodeSelector},
		unsupported{"enableDefaultDeny", u.EnableDefaultDeny != nil, msgEnableDefaultDeny},
		unsupported{"labels", u.Labels != nil, msgLabels},
		unsupported{"log", u.Log != nil, msgLog},
	)
}

func unsupportedIngress(u *v1alpha1.UnsupportedIngressFields, path *field.Path) field.ErrorList {
	return refuse(path,
		unsupported{"fromCIDR", u.FromCIDR != nil, "fromCIDR" + peersOnly + fromEndpoints},
		unsupported{"fromCIDRSet", u.FromCIDRSet != nil, "fromCIDRSet" + peersOnly + fromEndpoints},
		unsupported{"fromEntities", u.FromEntities != nil, "fromEntities" + peersOnly + fromEndpoints},
		unsupported{"fromGroups", u.FromGroups != nil, "fromGroups" + peersOnly + fromEndpoints},
		unsupported{"fromNodes", u.FromNodes != nil, "fromNodes" + peersOnly + fromEndpoints},
		unsupported{"fromRequires", u.FromRequires != nil, msgFromReq},
		unsupported{"icmps", u.ICMPs != nil, msgICMPs},
		unsupported{"authentication", u.Authentication != nil, msgAuth},
	)
}

func unsupportedEgress(u *v1alpha1.UnsupportedEgressFields, path *field.Path) field.ErrorList {
	return refuse(path,
		unsupported{"toCIDR", u.ToCIDR != nil, "toCIDR" + peersOnly + toEndpointsArg},
		unsupported{"toCIDRSet", u.ToCIDRSet != nil, "toCIDRSet" + peersOnly + toEndpointsArg},
		unsupported{"toEntities", u.ToEntities != nil, "toEntities" + peersOnly + toEndpointsArg},
		unsupported{"toFQDNs", u.ToFQDNs != nil, "toFQDNs" + peersOnly + toEndpointsArg},
		unsupported{"toServices", u.ToServices != nil, msgToServices},
		unsupported{"toGroups", u.ToGroups != nil, "toGroups" + peersOnly + toEndpointsArg},
		unsupported{"toNodes", u.ToNodes != nil, "toNodes" + peersOnly + toEndpointsArg},
		unsupported{"toRequires", u.ToRequires != nil, msgToReq},
		unsupported{"icmps", u.ICMPs != nil, msgICMPs},
		unsupported{"authentication", u.Authentication != nil, msgAuth},
	)
}

func unsupportedPortRule(u *v1alpha1.UnsupportedPortRuleFields, path *field.Path) field.ErrorList {
	return refuse(path,
		unsupported{"rules", u.Rules != nil, msgL7Rules},
		unsupported{"terminatingTLS", u.TerminatingTLS != nil, "terminatingTLS" + onlyL3L4},
		unsupported{"originatingTLS", u.OriginatingTLS != nil, "originatingTLS" + onlyL3L4},
		unsupported{"serverNames", u.ServerNames != nil, "serverNames" + onlyL3L4},
		unsupported{"listener", u.Listener != nil, "listener" + onlyL3L4},
	)
}
