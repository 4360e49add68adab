package meshconfig

import (
	"fmt"
	"strings"
)

// ServiceOptions are what a Service's mesh annotations ask for.
type ServiceOptions struct {
	// Global makes the service one service across the mesh.
	Global bool
	// Shared exports the cluster's backends to the other clusters; true
	// unless annotated otherwise.
	Shared bool
	// Affinity is AffinityNone (the default), AffinityLocal or
	// AffinityRemote.
	Affinity string
}

// ParseServiceAnnotations reads the mesh annotations of a Service. The
// isthmus.dev spelling wins over the service.cilium.io one when both are
// set. A value that cannot be used is reported in errs, naming the
// annotation and the accepted values, and its field keeps its default; the
// other fields are still read.
func ParseServiceAnnotations(annotations map[string]string) (opts ServiceOptions, errs []error) {
	opts = ServiceOptions{Shared: true, Affinity: AffinityNone}
	get := func(key, alias string) (k, v string, ok bool) {
		if v, ok := annotations[key]; ok {
			return key, v, true
		}
		v, ok = annotations[alias]
		return alias, v, ok
	}
	parseBool := func(key, alias string, into *bool) {
		k, v, ok := get(key, alias)
		if !ok {
			return
		}
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true":
			*into = true
		case "false":
			*into = false
		default:
			errs = append(errs, fmt.Errorf("annotation %s=%q: want \"true\" or \"false\"", k, v))
		}
	}
	parseBool(ServiceGlobalAnnotation, CiliumServiceGlobalAnnotation, &opts.Global)
	parseBool(ServiceSharedAnnotation, CiliumServiceSharedAnnotation, &opts.Shared)
	if k, v, ok := get(ServiceAffinityAnnotation, CiliumServiceAffinityAnnotation); ok {
		switch a := strings.ToLower(strings.TrimSpace(v)); a {
		case AffinityNone, AffinityLocal, AffinityRemote:
			opts.Affinity = a
		case "":
		default:
			errs = append(errs, fmt.Errorf("annotation %s=%q: want %q, %q or %q; using %q", k, v, AffinityLocal, AffinityRemote, AffinityNone, AffinityNone))
		}
	}
	return opts, errs
}
