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
	// unless annotated otherwise. It means something only when Global.
	Shared bool
	// Affinity is AffinityNone (the default), AffinityLocal or
	// AffinityRemote.
	Affinity string
}

// AnnotationProblem is an annotation value that could not be used, and the
// default that applies instead.
type AnnotationProblem struct {
	Annotation string
	Value      string
	Default    string
	Reason     string
}

func (p AnnotationProblem) Error() string {
	return fmt.Sprintf("annotation %s=%q %s; using %s", p.Annotation, p.Value, p.Reason, p.Default)
}

// ParseServiceAnnotations reads the mesh annotations of a Service; the
// mesh apiserver and the node agents read them through it alone, so they
// never disagree. The isthmus.dev spelling wins over the
// service.cilium.io one when both are set. A value that cannot be used is
// returned as a problem, naming the annotation and the accepted values, and
// its field keeps its default (not global, shared, affinity none); the
// other fields are still read.
func ParseServiceAnnotations(annotations map[string]string) (opts ServiceOptions, problems []AnnotationProblem) {
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
		// Only true and false, in any case, as ClusterMesh reads them.
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "true":
			*into = true
		case "false":
			*into = false
		default:
			problems = append(problems, AnnotationProblem{Annotation: k, Value: v, Default: fmt.Sprint(*into), Reason: `is not "true" or "false"`})
		}
	}
	parseBool(ServiceGlobalAnnotation, CiliumServiceGlobalAnnotation, &opts.Global)
	parseBool(ServiceSharedAnnotation, CiliumServiceSharedAnnotation, &opts.Shared)
	if k, v, ok := get(ServiceAffinityAnnotation, CiliumServiceAffinityAnnotation); ok {
		switch a := strings.ToLower(strings.TrimSpace(v)); a {
		case AffinityNone, AffinityLocal, AffinityRemote:
			opts.Affinity = a
		default:
			problems = append(problems, AnnotationProblem{Annotation: k, Value: v, Default: AffinityNone,
				Reason: fmt.Sprintf("is not %q, %q or %q", AffinityLocal, AffinityRemote, AffinityNone)})
		}
	}
	return opts, problems
}
