package agent

import (
	"log/slog"

	"github.com/isthmus-mesh/isthmus/agent/meshpolicy"
	"github.com/isthmus-mesh/isthmus/agent/state"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
)

// newPolicyReconciler builds the MeshNetworkPolicy reconciler (package
// meshpolicy), or returns nil when cfg.Policies is nil.
func newPolicyReconciler(logger *slog.Logger, cfg Config, st *state.State, m *dpmaps.Maps) (*meshpolicy.Reconciler, error) {
	if cfg.Policies == nil {
		logger.Warn("No MeshNetworkPolicy client: policy is not enforced by this agent, and the policy maps keep what they hold")
		return nil, nil
	}
	return meshpolicy.New(logger, meshpolicy.Config{
		Cluster:        cfg.ClusterName,
		Client:         cfg.Policies,
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

// policyOfRule names the MeshNetworkPolicy ("namespace/name") whose
// entry decided a flow, from the flow event's rule ID
// (tunnelpolicy.FlowEvent.RuleID); "" when no policy did (rule ID 0, an
// endpoint no policy selects) or the policy is gone. The flow stream calls
// it to render verdicts.
func (a *Agent) policyOfRule(ruleID uint32) string {
	ref, ok := a.policy.PolicyForRule(ruleID) // nil-safe: policy disabled
	if !ok {
		return ""
	}
	return ref.String()
}
