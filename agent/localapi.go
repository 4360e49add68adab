package agent

import (
	"cmp"
	"context"
	"path/filepath"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/agent/remotecluster"
	"github.com/isthmus-mesh/isthmus/agent/state"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// dumpChunk is how many entries one streamed dump message carries.
const dumpChunk = 1000

// apiServer serves the local API from the agent's parts.
type apiServer struct {
	agentv1.UnimplementedAgentServer
	a *Agent
}

func (s *apiServer) Status(context.Context, *agentv1.StatusRequest) (*agentv1.StatusResponse, error) {
	a := s.a
	ms := a.mesh.Status()
	resp := &agentv1.StatusResponse{
		NodeName:             a.cfg.NodeName,
		ClusterName:          a.cfg.ClusterName,
		ClusterId:            a.cfg.ClusterID,
		MaxConnectedClusters: a.cfg.MaxConnectedClusters,
		Started:              timestamppb.New(a.started),
		SecretRead:           ms.SecretSeen,
		InitialSyncDone:      a.syncedOnce.Load(),
		InvalidEntries:       ms.Invalid,
		BpfRoot:              a.cfg.Maps.Root,
	}
	for _, c := range ms.Clusters {
		sum, _ := a.state.Summary(c.Cluster)
		resp.Clusters = append(resp.Clusters, clusterStatus(c, sum))
	}
	sc := a.svcRec.Counts()
	total, hosts := a.ipcache.Entries()
	for _, m := range []struct {
		name    string
		entries int
	}{
		{dpmaps.NameIPHosts, hosts},
		{dpmaps.NameIPCache, total - hosts},
		{dpmaps.NameFrontends, sc.Frontends},
		{dpmaps.NameSlots, sc.Slots},
		{dpmaps.NameBackends, sc.Backends},
	} {
		resp.Maps = append(resp.Maps, &agentv1.MapStatus{
			Name: m.name, Entries: uint64(m.entries),
			MaxEntries: uint64(a.maps.Map(m.name).MaxEntries()),
			PinPath:    filepath.Join(a.maps.Root(), m.name),
		})
	}
	return resp, nil
}

func clusterStatus(c remotecluster.Status, sum state.ClusterSummary) *agentv1.ClusterStatus {
	out := &agentv1.ClusterStatus{
		Name:        c.Cluster,
		Endpoints:   c.Endpoints,
		ClusterId:   c.ClusterID,
		State:       c.State.String(),
		Connected:   c.Connected(),
		Ready:       c.Ready(),
		LastError:   c.LastError,
		Connections: c.Connections,
	}
	if !c.LastErrorTime.IsZero() {
		out.LastErrorTime = timestamppb.New(c.LastErrorTime)
	}
	if !c.LastChange.IsZero() {
		out.LastChange = timestamppb.New(c.LastChange)
	}
	if !c.LastHeartbeat.IsZero() {
		out.LastHeartbeat = timestamppb.New(c.LastHeartbeat)
	}
	for _, k := range protocol.Kinds {
		ks := c.Kinds[k]
		out.Kinds = append(out.Kinds, &agentv1.KindStatus{Kind: string(k), Synced: ks.Synced, Entries: uint64(sum.Entries(k)), DecodeErrors: ks.DecodeErrors})
	}
	return out
}

func (s *apiServer) DumpIPCache(_ *agentv1.DumpIPCacheRequest, stream grpc.ServerStreamingServer[agentv1.IPCacheChunk]) error {
	entries, err := s.a.maps.IPCache.Dump()
	if err != nil {
		return err
	}
	out := make([]*agentv1.IPCacheEntry, 0, len(entries))
	for p, e := range entries {
		tep := ""
		if e.TunnelEndpoint.IsValid() {
			tep = e.TunnelEndpoint.String()
		}
		out = append(out, &agentv1.IPCacheEntry{Prefix: p.String(), Identity: uint32(e.Identity), TunnelEndpoint: tep, ClusterId: uint32(e.ClusterID), Flags: uint32(e.Flags)})
	}
	slices.SortFunc(out, func(x, y *agentv1.IPCacheEntry) int { return cmp.Compare(x.Prefix, y.Prefix) })
	for chunk := range slices.Chunk(out, dumpChunk) {
		if err := stream.Send(&agentv1.IPCacheChunk{Entries: chunk}); err != nil {
			return err
		}
	}
	return nil
}

func (s *apiServer) DumpServices(context.Context, *agentv1.DumpServicesRequest) (*agentv1.DumpServicesResponse, error) {
	svcs, err := s.a.maps.Services.Dump()
	if err != nil {
		return nil, err
	}
	resp := &agentv1.DumpServicesResponse{}
	for _, svc := range svcs {
		out := &agentv1.Service{Frontend: svc.Frontend.String(), Affinity: svc.Affinity.String()}
		for _, b := range svc.Backends {
			out.Backends = append(out.Backends, &agentv1.Backend{Address: b.Addr.String(), Port: uint32(b.Port), ClusterId: uint32(b.ClusterID), Local: b.Local})
		}
		resp.Services = append(resp.Services, out)
	}
	return resp, nil
}

func (s *apiServer) DumpIdentities(_ *agentv1.DumpIdentitiesRequest, stream grpc.ServerStreamingServer[agentv1.IdentityChunk]) error {
	var out []*agentv1.Identity
	s.a.state.Identities(func(cluster string, id protocol.NumericIdentity, labels protocol.Labels) {
		ls := make([]string, len(labels))
		for i, l := range labels {
			ls[i] = l.String()
		}
		out = append(out, &agentv1.Identity{Id: uint32(id), Cluster: cluster, Labels: ls})
	})
	slices.SortFunc(out, func(x, y *agentv1.Identity) int { return cmp.Compare(x.Id, y.Id) })
	for chunk := range slices.Chunk(out, dumpChunk) {
		if err := stream.Send(&agentv1.IdentityChunk{Identities: chunk}); err != nil {
			return err
		}
	}
	return nil
}
