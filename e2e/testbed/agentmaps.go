package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"

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
	ipc, err := client.DumpIPCache(ctx, &agentv1.DumpIPCacheRequest{})
	if err != nil {
		return nil, fmt.Errorf("dump the ipcache of the agent of %s: %w", node, err)
	}
	for {
		chunk, err := ipc.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dump the ipcache of the agent of %s: %w", node, err)
		}
		m.IPCache = append(m.IPCache, chunk.Entries...)
	}
	svcs, err := client.DumpServices(ctx, &agentv1.DumpServicesRequest{})
	if err != nil {
		return nil, fmt.Errorf("dump the services of the agent of %s: %w", node, err)
	}
	m.Services = svcs.Services
	ids, err := client.DumpIdentities(ctx, &agentv1.DumpIdentitiesRequest{})
	if err != nil {
		return nil, fmt.Errorf("dump the identities of the agent of %s: %w", node, err)
	}
	for {
		chunk, err := ids.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("dump the identities of the agent of %s: %w", node, err)
		}
		m.Identities = append(m.Identities, chunk.Identities...)
	}
	return m, nil
}
