package apiserver

import (
	"fmt"

	"k8s.io/client-go/tools/record"

	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apiserver/policystatus"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// policyStatus builds the MeshNetworkPolicy status writer: the apiserver,
// the single writer of its cluster's mesh state, also writes the status
// of its cluster's policies, so that agents only read them.
func (s *Server) policyStatus(recorder record.EventRecorder) (*policystatus.Controller, error) {
	cs, err := client.NewForConfig(s.cfg.Kube)
	if err != nil {
		return nil, fmt.Errorf("isthmus.dev client: %w", err)
	}
	return policystatus.New(s.logger.With(logfields.Component, "policy-status"), policystatus.Config{
		Client:   cs,
		Recorder: recorder,
		Registry: s.metrics.registry,
	})
}
