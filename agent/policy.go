package agent

import (
	"log/slog"

	"github.com/isthmus-mesh/isthmus/agent/meshpolicy"
	"github.com/isthmus-mesh/isthmus/agent/state"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
)

// newPolicyReconciler builds the MeshNetworkPolicy reconciler (package
// meshpolicy), or returns nil when cfg.Mesh is nil.
func newPolicyReconciler(logger *slog.Logger, cfg Config, st *state.State, m *dpmaps.Maps) (*meshpolicy.Reconciler, error) {
	if cfg.Mesh == nil {
		logger.Warn("No isthmus.dev client: MeshNetworkPolicy is not enforced by this agent, and the policy maps keep what they hold")
		return nil, nil
	}
	return meshpolicy.New(logger, meshpolicy.Config{
		Cluster:        cfg.ClusterName,
		Client:         cfg.Mesh,
		Namespace:      cfg.ServiceNamespace,
		State:          st,
		Maps:           m,
		DefaultDeny:    cfg.PolicyDefaultDeny,
		Debounce:       cfg.Reconcile.Debounce,
		ResyncInterval: cfg.Reconcile.ResyncInterval,
		RetryInterval:  cfg.Reconcile.RetryInterval,
		Registry:       cfg.Registry,
	})
}

// flowPolicies names the MeshNetworkPolicies ("namespace/name") behind a
// flow event's verdict (meshpolicy.Reconciler.FlowPolicies): the one whose
// entry allowed the flow, or for a policy-no-match drop those that put the
// local endpoint into default deny; none where no policy decided. The flow
// stream calls it to render verdicts.
func (a *Agent) flowPolicies(ev tunnelpolicy.FlowEvent) []string {
	refs := a.policy.FlowPolicies(ev) // nil-safe: policy disabled
	out := make([]string, len(refs))
	for i, r := range refs {
		out[i] = r.String()
	}
	return out
}
