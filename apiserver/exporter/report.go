package exporter

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// EventReasonBadAnnotation is the reason of the Warning Events a bad
// annotation value gets.
const EventReasonBadAnnotation = "InvalidMeshAnnotation"

// report logs, counts and records as an Event each problem of object that
// was not reported with the same value before.
func (e *Exporter) report(obj runtime.Object, object string, problems []meshconfig.AnnotationProblem) {
	prev := e.problems[object]
	if len(problems) == 0 {
		delete(e.problems, object)
		return
	}
	cur := make(map[string]string, len(problems))
	for _, p := range problems {
		cur[p.Annotation] = p.Value
		if v, ok := prev[p.Annotation]; ok && v == p.Value {
			continue
		}
		e.logger.Warn("bad annotation", logfields.Kind, object, logfields.Key, p.Annotation, "value", p.Value, logfields.Error, p.Error())
		if c := e.cfg.Metrics.BadAnnotations; c != nil {
			c.WithLabelValues(p.Annotation).Inc()
		}
		if e.cfg.Recorder != nil {
			e.cfg.Recorder.Event(obj, corev1.EventTypeWarning, EventReasonBadAnnotation, p.Error())
		}
	}
	e.problems[object] = cur
}
