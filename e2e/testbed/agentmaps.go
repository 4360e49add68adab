package testbed

import (
	"context"
	"fmt"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
)

// AgentMaps is what one node agent's maps hold, as its local API dumps
// them.
type AgentMaps struct {
	Node       string
	IPCache    []*agentv1.IPCacheEntry
	Services   []*agentv1.Service
	Identities []*agentv1.Identity
}

// dumpAgent reads every dump of an agent through its gRPC API.
func dumpAgent(ctx context.Context, client agentv1.AgentClient, node string) (*AgentMaps, error) {
	m := &AgentMaps{Node: node}
	var err error
	if m.IPCache, err = agentv1.DumpAllIPCache(ctx, client); err != nil {
		return nil, fmt.Errorf("dump the ipcache of the agent of %s: %w", node, err)
	}
	svcs, err := client.DumpServices(ctx, &agentv1.DumpServicesRequest{})
	if err != nil {
		return nil, fmt.Errorf("dump the services of the agent of %s: %w", node, err)
	}
	m.Services = svcs.Services
	if m.Identities, err = agentv1.DumpAllIdentities(ctx, client); err != nil {
		return nil, fmt.Errorf("dump the identities of the agent of %s: %w", node, err)
	}
	return m, nil
}
