package exporter

import (
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// ServiceOptions are a Service's mesh annotations, defaults applied.
type ServiceOptions struct {
	Global bool
	// Shared defaults to true when global.
	Shared bool
	// Affinity is meshconfig.AffinityNone, AffinityLocal or AffinityRemote.
	// It is not part of the exported value (readers take it from their own
	// cluster's Service); it is validated here so a typo is reported.
	Affinity string
}

// AnnotationProblem is an annotation value that could not be used.
type AnnotationProblem struct {
	Annotation string
	Value      string
	Default    string
	Reason     string
}

func (p AnnotationProblem) Error() string {
	return fmt.Sprintf("annotation %s=%q %s; using %s", p.Annotation, p.Value, p.Reason, p.Default)
}

// annotation returns the isthmus.dev value of an annotation, else its
// service.cilium.io spelling.
func annotation(ann map[string]string, isthmus, cilium string) (key, value string, ok bool) {
	if v, ok := ann[isthmus]; ok {
		return isthmus, v, true
	}
	if v, ok := ann[cilium]; ok {
		return cilium, v, true
	}
	return "", "", false
}

// ParseServiceAnnotations reads the global, shared and affinity
// annotations (isthmus.dev spelling first, then service.cilium.io). A bad
// value is reported and its default applies: not global, shared when
// global, affinity none.
func ParseServiceAnnotations(ann map[string]string) (ServiceOptions, []AnnotationProblem) {
	var (
		opts     = ServiceOptions{Affinity: meshconfig.AffinityNone}
		problems []AnnotationProblem
	)
	parseBool := func(key, value, def string) (bool, bool) {
		// Only true and false, in any case, as ClusterMesh reads them.
		switch strings.ToLower(strings.TrimSpace(value)) {
		case "true":
			return true, true
		case "false":
			return false, true
		}
		problems = append(problems, AnnotationProblem{Annotation: key, Value: value, Default: def, Reason: `is not "true" or "false"`})
		return false, false
	}
	if k, v, ok := annotation(ann, meshconfig.ServiceGlobalAnnotation, meshconfig.CiliumServiceGlobalAnnotation); ok {
		opts.Global, _ = parseBool(k, v, "false")
	}
	opts.Shared = opts.Global
	if k, v, ok := annotation(ann, meshconfig.ServiceSharedAnnotation, meshconfig.CiliumServiceSharedAnnotation); ok {
		if b, valid := parseBool(k, v, "true"); valid {
			opts.Shared = opts.Global && b
		}
	}
	if k, v, ok := annotation(ann, meshconfig.ServiceAffinityAnnotation, meshconfig.CiliumServiceAffinityAnnotation); ok {
		switch a := strings.ToLower(strings.TrimSpace(v)); a {
		case meshconfig.AffinityNone, meshconfig.AffinityLocal, meshconfig.AffinityRemote:
			opts.Affinity = a
		default:
			problems = append(problems, AnnotationProblem{Annotation: k, Value: v, Default: meshconfig.AffinityNone, Reason: `is not "local", "remote" or "none"`})
		}
	}
	return opts, problems
}

// ConvertService returns the cluster service of a global, shared Service:
// its cluster IPs as frontends and the ready endpoints of its
// EndpointSlices as backends, ports matched by name.
func ConvertService(cluster string, clusterID uint32, svc *corev1.Service, slices []*discoveryv1.EndpointSlice) *protocol.ClusterService {
	cs := &protocol.ClusterService{
		Cluster:         cluster,
		Namespace:       svc.Namespace,
		Name:            svc.Name,
		Frontends:       map[string]protocol.PortConfiguration{},
		Labels:          svc.Labels,
		Selector:        svc.Spec.Selector,
		IncludeExternal: true,
		Shared:          true,
		ClusterID:       clusterID,
	}
	ports := make(protocol.PortConfiguration, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		ports[p.Name] = &protocol.L4Addr{Protocol: meshconfig.L4Protocol(p.Protocol), Port: uint16(p.Port)}
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			continue // "None": headless
		}
		cs.Frontends[ip.Unmap().String()] = ports
	}
	cs.Backends, cs.Hostnames = meshconfig.ServiceBackends(svc.Spec.Ports, slices)
	return cs
}
