package agent

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/agent/flows"
	"github.com/isthmus-mesh/isthmus/agent/remotecluster"
	"github.com/isthmus-mesh/isthmus/agent/state"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
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
		Datapath:             s.datapathStatus(),
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
	if a.policy != nil {
		ps := a.policy.Stats()
		resp.Policy = &agentv1.PolicyStatus{
			Policies: uint32(ps.Policies), InvalidPolicies: uint32(ps.InvalidPolicies),
			Identities: uint32(ps.Identities), NodeIdentities: uint32(ps.NodeIdentities),
			Entries: uint32(ps.Entries), EnforcedIdentities: uint32(ps.EnforcedIdentities),
			Synced: ps.Synced, DefaultDeny: a.cfg.PolicyDefaultDeny,
		}
		for _, m := range []struct {
			name    string
			entries int
		}{{dpmaps.NamePolicy, ps.Entries}, {dpmaps.NameEnforcement, ps.EnforcedIdentities}} {
			resp.Maps = append(resp.Maps, &agentv1.MapStatus{
				Name: m.name, Entries: uint64(m.entries),
				MaxEntries: uint64(a.maps.Map(m.name).MaxEntries()),
				PinPath:    filepath.Join(a.maps.Root(), m.name),
			})
		}
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

func (s *apiServer) datapathStatus() *agentv1.DatapathStatus {
	dp := &s.a.dp
	out := &agentv1.DatapathStatus{SocketLbCgroup: s.a.cfg.SocketLBCgroup}
	if dp.tunnel == nil {
		return out
	}
	st := dp.tunnel.Status()
	out.TunnelPolicyAttached = st.Attached
	wg := &agentv1.WireGuardStatus{
		Device: st.Device, Mode: st.Mode.String(), PublicKey: st.PublicKey,
		ListenPort: uint32(st.ListenPort), Mtu: uint32(st.MTU),
		Peers: uint32(st.Peers), KeptPeers: uint32(st.Kept), Pruning: st.Pruning,
		KeyPublished: dp.keys.Published(), LastError: st.LastError, Recreations: uint32(st.Recreations),
	}
	if !st.LastErrorTime.IsZero() {
		wg.LastErrorTime = timestamppb.New(st.LastErrorTime)
	}
	if !st.LastReconcile.IsZero() {
		wg.LastReconcile = timestamppb.New(st.LastReconcile)
	}
	for _, sk := range st.Skipped {
		wg.Skipped = append(wg.Skipped, &agentv1.SkippedNode{Cluster: sk.Node.Cluster, Node: sk.Node.Name, Reason: string(sk.Reason), Detail: sk.Detail})
	}
	out.Wireguard = wg
	return out
}

func (s *apiServer) DumpPeers(context.Context, *agentv1.DumpPeersRequest) (*agentv1.DumpPeersResponse, error) {
	if s.a.dp.tunnel == nil {
		return nil, status.Error(codes.FailedPrecondition, "the agent runs without WireGuard (--encryption disabled)")
	}
	peers, err := s.a.dp.tunnel.Peers()
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	resp := &agentv1.DumpPeersResponse{}
	for _, p := range peers {
		out := &agentv1.Peer{Name: p.Name, PublicKey: p.PublicKey, ReceiveBytes: p.ReceiveBytes, TransmitBytes: p.TransmitBytes}
		if p.Endpoint.IsValid() {
			out.Endpoint = p.Endpoint.String()
		}
		for _, a := range p.AllowedIPs {
			out.AllowedIps = append(out.AllowedIps, a.String())
		}
		if !p.LastHandshake.IsZero() {
			out.LastHandshake = timestamppb.New(p.LastHandshake)
		}
		resp.Peers = append(resp.Peers, out)
	}
	slices.SortFunc(resp.Peers, func(x, y *agentv1.Peer) int { return cmp.Compare(x.Name, y.Name) })
	return resp, nil
}

func (s *apiServer) Flows(req *agentv1.FlowsRequest, stream grpc.ServerStreamingServer[agentv1.Flow]) error {
	hub := s.a.dp.flows
	if hub == nil {
		return status.Error(codes.FailedPrecondition, "the agent runs without WireGuard (--encryption disabled), so there is no tunnel to see flows on")
	}
	f, err := flowFilter(req)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	past, sub := hub.Subscribe(f, int(req.Last))
	defer sub.Close()
	for _, ev := range past {
		if err := stream.Send(flowMessage(ev, 0, s.a.flowPolicies(ev))); err != nil {
			return err
		}
	}
	if !req.Follow {
		return nil
	}
	var reported uint64
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case <-sub.Done():
			return status.Error(codes.Unavailable, "the agent is stopping")
		case ev := <-sub.Events():
			lost := sub.Lost()
			if err := stream.Send(flowMessage(ev, lost-reported, s.a.flowPolicies(ev))); err != nil {
				return err
			}
			reported = lost
		}
	}
}

func flowFilter(req *agentv1.FlowsRequest) (flows.Filter, error) {
	f := flows.Filter{Port: uint16(req.Port), Identity: protocol.NumericIdentity(req.Identity), ClusterID: uint16(req.ClusterId)}
	switch req.Verdict {
	case agentv1.Verdict_VERDICT_DROPPED:
		f.Verdict = flows.Dropped
	case agentv1.Verdict_VERDICT_PASSED:
		f.Verdict = flows.Passed
	}
	switch strings.ToLower(req.Direction) {
	case "":
	case "ingress":
		f.Direction = dpmaps.Ingress
	case "egress":
		f.Direction = dpmaps.Egress
	default:
		return f, fmt.Errorf("direction %q: want ingress or egress", req.Direction)
	}
	if req.Protocol != "" {
		p, ok := protocolByName[strings.ToLower(req.Protocol)]
		if !ok {
			return f, fmt.Errorf("protocol %q: want TCP, UDP, ICMP, ICMPv6 or SCTP", req.Protocol)
		}
		f.Protocol = p
	}
	if req.Address != "" {
		a, err := netip.ParseAddr(req.Address)
		if err != nil {
			return f, fmt.Errorf("address %q: %w", req.Address, err)
		}
		f.Address = a
	}
	if req.Port > 65535 {
		return f, fmt.Errorf("port %d: want 1-65535", req.Port)
	}
	return f, nil
}

var protocolByName = map[string]dpmaps.Protocol{
	"tcp": dpmaps.ProtoTCP, "udp": dpmaps.ProtoUDP, "icmp": dpmaps.ProtoICMP, "icmpv6": dpmaps.ProtoICMPv6, "sctp": dpmaps.ProtoSCTP,
}

func flowMessage(ev tunnelpolicy.FlowEvent, lost uint64, policies []string) *agentv1.Flow {
	return &agentv1.Flow{
		Time:                 timestamppb.New(ev.Time),
		Source:               ev.Src.String(),
		Destination:          ev.Dst.String(),
		Protocol:             ev.Protocol.String(),
		Direction:            ev.Direction.String(),
		Dropped:              ev.Dropped,
		Reason:               ev.Reason.String(),
		SourceIdentity:       uint32(ev.SrcIdentity),
		DestinationIdentity:  uint32(ev.DstIdentity),
		SourceClusterId:      uint32(ev.SrcCluster),
		DestinationClusterId: uint32(ev.DstCluster),
		RuleId:               ev.RuleID,
		Length:               ev.Length,
		Lost:                 lost,
		Policies:             policies,
	}
}
