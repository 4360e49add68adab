// Package agent is the Isthmus node agent: it reads every cluster of the
// mesh (agent/clustermesh, agent/remotecluster), merges their state with the
// local cluster's global Services (agent/state, agent/localservices),
// programs the pinned BPF maps (agent/reconcilers, datapath/maps) and the
// MeshNetworkPolicies in force on the node (agent/meshpolicy), runs the
// node's datapath — the socket load balancer (datapath/socklb), the
// WireGuard tunnel to the other clusters' nodes (agent/tunnel) with the
// tunnel policy programs on it (datapath/tunnelpolicy) and their flow
// events (agent/flows) — publishes its WireGuard key (agent/nodekey) and
// its view of the mesh (agent/meshagent), and serves its status, dumps and
// flows on a local gRPC socket and Prometheus metrics over HTTP.
//
// agent.go wires the parts; each lives in its own package or file
// (datapath.go, localapi.go, meshagentstatus.go, metrics.go).
//
// It must not import apiserver/ or cmd/.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/agent/clustermesh"
	"github.com/isthmus-mesh/isthmus/agent/localservices"
	"github.com/isthmus-mesh/isthmus/agent/meshagent"
	"github.com/isthmus-mesh/isthmus/agent/meshpolicy"
	"github.com/isthmus-mesh/isthmus/agent/reconcilers"
	"github.com/isthmus-mesh/isthmus/agent/remotecluster"
	"github.com/isthmus-mesh/isthmus/agent/state"
	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// The readers hand their state to the State's cluster writers.
var _ remotecluster.Handler = (*state.ClusterWriter)(nil)

// Defaults of Config fields.
const (
	DefaultAPISocket          = "/var/run/isthmus/agent.sock"
	DefaultStateDir           = "/var/lib/isthmus/agent"
	DefaultMetricsAddress     = ":9966"
	DefaultInitialSyncTimeout = 2 * time.Minute
)

// Config configures an Agent.
type Config struct {
	// NodeName, ClusterName, ClusterID and MaxConnectedClusters place the
	// node in the mesh. Required (MaxConnectedClusters: 255 or 511).
	NodeName             string
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters uint32
	// Client talks to the local cluster's kube-apiserver. Required.
	Client kubernetes.Interface
	// Maps says where the maps are pinned and their sizes; Root empty
	// means dpmaps.DefaultRoot.
	Maps dpmaps.Config
	// StateDir holds the agent's files. Empty means DefaultStateDir.
	StateDir string
	// APISocket is the unix socket of the local API. Empty means
	// DefaultAPISocket; "-" disables the API.
	APISocket string
	// MetricsAddress is the host:port of the Prometheus endpoint
	// (/metrics). Empty means DefaultMetricsAddress; "-" disables it.
	MetricsAddress string
	// InitialSyncTimeout bounds how long the agent waits for every
	// cluster of the Secret to sync before it prunes the maps anyway.
	// Zero means DefaultInitialSyncTimeout.
	InitialSyncTimeout time.Duration
	// Reader is the template of every cluster reader's timing (see
	// remotecluster.Config); Entry, ClusterIDs, Handler, Metrics and
	// MaxConnectedClusters are set by the agent.
	Reader remotecluster.Config
	// Reconcile is the reconcilers' timing.
	Reconcile reconcilers.LoopConfig
	// Registry receives the metrics. Nil means a new registry with the Go
	// and process collectors.
	Registry *prometheus.Registry
	// ClusterMeshNamespace is where the isthmus-clustermesh Secret is.
	// Empty means meshconfig.Namespace.
	ClusterMeshNamespace string
	// Pprof serves the Go profiler under /debug/pprof/ on the metrics
	// address, for diagnosing memory and CPU use.
	Pprof bool
	// ServiceNamespace limits the Services and MeshNetworkPolicies watched
	// to one namespace. Empty means all (what a node agent does); tests
	// that share an apiserver scope it.
	ServiceNamespace string

	// WireGuard configures the node's WireGuard device: the encrypted
	// tunnel to the nodes of the other clusters, peers computed from the
	// merged state, with the tunnel policy programs attached. StateDir
	// empty means Config.StateDir. Nil means no device and no tunnel
	// policy: pods of other clusters are reached only where the network
	// routes them, unencrypted and unenforced.
	WireGuard *wireguard.Config
	// TunnelPolicy configures the tunnel policy programs (connection
	// tracking lifetimes, tcx or clsact); Ethernet is ignored.
	TunnelPolicy tunnelpolicy.Config
	// FlowHistory is how many of the latest flow events the local API
	// keeps for new Flows streams. Zero means flows.DefaultHistory.
	FlowHistory int
	// SocketLBCgroup is the cgroup v2 directory the socket load balancer
	// attaches to: connections of its processes (and their descendants)
	// to global services go to the services' backends. Empty means the
	// socket LB is not attached.
	SocketLBCgroup string
	// Mesh is the isthmus.dev API client; the agent writes the node's
	// MeshAgent status and reads the local cluster's MeshNetworkPolicies
	// with it. Nil means no MeshAgent is written and no policy is
	// enforced (the policy maps keep what they hold).
	Mesh *meshclient.Clientset
	// MeshAgentHeartbeat is the longest time between MeshAgent status
	// writes. Zero means meshagent.DefaultHeartbeat.
	MeshAgentHeartbeat time.Duration
	// PolicyDefaultDeny turns on the mesh-wide default deny: endpoints no
	// MeshNetworkPolicy selects pass no cross-cluster traffic.
	PolicyDefaultDeny bool
}

func (c *Config) setDefaults() {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.APISocket == "" {
		c.APISocket = DefaultAPISocket
	}
	if c.MetricsAddress == "" {
		c.MetricsAddress = DefaultMetricsAddress
	}
	if c.InitialSyncTimeout == 0 {
		c.InitialSyncTimeout = DefaultInitialSyncTimeout
	}
	if c.Maps.Root == "" {
		c.Maps.Root = dpmaps.DefaultRoot
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
		c.Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if c.WireGuard != nil && c.WireGuard.StateDir == "" {
		wg := *c.WireGuard
		wg.StateDir = c.StateDir
		c.WireGuard = &wg
	}
}

func (c *Config) validate() error {
	if c.NodeName == "" {
		return errors.New("node name is empty; pass --node-name (the Kubernetes Node's name)")
	}
	if err := protocol.ValidateClusterName(c.ClusterName); err != nil {
		return fmt.Errorf("--cluster-name: %w", err)
	}
	if err := protocol.ValidateClusterID(c.ClusterID, c.MaxConnectedClusters); err != nil {
		return fmt.Errorf("--cluster-id/--max-connected-clusters: %w", err)
	}
	if c.Client == nil {
		return errors.New("agent: Config.Client is required")
	}
	return nil
}

// Agent is a running node agent. Construct it with New, start it with Run.
type Agent struct {
	logger  *slog.Logger
	cfg     Config
	started time.Time

	maps       *dpmaps.Maps
	state      *state.State
	ids        *remotecluster.ClusterIDs
	mesh       *clustermesh.ClusterMesh
	services   *localservices.Watcher
	ipcache    *reconcilers.IPCacheReconciler
	svcRec     *reconcilers.ServiceReconciler
	policy     *meshpolicy.Reconciler // nil: policy not enforced
	broadcast  events.EventBroadcaster
	syncedOnce atomic.Bool
	dp         datapath
	meshAgent  *meshagent.Writer // nil without Config.Mesh
	links      linkTracker
}

// New opens (or creates) the pinned maps and builds the agent's parts. It
// does not connect anywhere until Run. On error, whatever was opened is
// closed again.
func New(logger *slog.Logger, cfg Config) (_ *Agent, err error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	a := &Agent{logger: logger, cfg: cfg, started: time.Now()}
	a.maps, err = dpmaps.Open(cfg.Maps)
	if err != nil {
		return nil, fmt.Errorf("open BPF maps under %s: %w", cfg.Maps.Root, err)
	}
	defer func() {
		if err != nil {
			a.maps.Close()
		}
	}()
	for _, rec := range a.maps.Recreated() {
		logger.Warn("Recreated a pinned map that differed from this build", logfields.Map, rec.Name, "reason", rec.Reason, "migrated", rec.Migrated, "lost", rec.Lost)
	}
	if _, err := a.maps.Config.Update(func(s *dpmaps.MeshSettings) { s.ClusterID = uint16(cfg.ClusterID) }); err != nil {
		return nil, err
	}

	a.state, err = state.New(state.Config{
		LocalCluster: cfg.ClusterName, LocalClusterID: cfg.ClusterID,
		MaxConnectedClusters: cfg.MaxConnectedClusters, NodeName: cfg.NodeName,
	})
	if err != nil {
		return nil, err
	}
	if err := cfg.Registry.Register(newStateCollector(a.state)); err != nil {
		return nil, err
	}
	a.ids = remotecluster.NewClusterIDs(cfg.ClusterName, cfg.ClusterID)
	reader := cfg.Reader
	reader.MaxConnectedClusters = cfg.MaxConnectedClusters
	reader.Metrics = remotecluster.NewMetrics(cfg.Registry)
	a.mesh, err = clustermesh.New(logger, clustermesh.Config{Client: cfg.Client, Namespace: cfg.ClusterMeshNamespace, State: a.state, ClusterIDs: a.ids, Reader: reader})
	if err != nil {
		return nil, err
	}
	a.broadcast = events.NewBroadcaster(&events.EventSinkImpl{Interface: cfg.Client.EventsV1()})
	a.services, err = localservices.New(logger, localservices.Config{
		Client: cfg.Client, State: a.state, Namespace: cfg.ServiceNamespace,
		Events: a.broadcast.NewRecorder(scheme.Scheme, "isthmus-agent"),
	})
	if err != nil {
		return nil, err
	}
	rm := reconcilers.NewMetrics(cfg.Registry)
	a.ipcache, err = reconcilers.NewIPCache(logger, reconcilers.IPCacheConfig{LoopConfig: cfg.Reconcile, State: a.state, Map: a.maps.IPCache, Metrics: rm})
	if err != nil {
		return nil, err
	}
	a.svcRec, err = reconcilers.NewServices(logger, reconcilers.ServiceConfig{LoopConfig: cfg.Reconcile, State: a.state, Maps: a.maps, Metrics: rm})
	if err != nil {
		return nil, err
	}
	if a.policy, err = newPolicyReconciler(logger, cfg, a.state, a.maps); err != nil {
		return nil, err
	}
	// The datapath: socket LB, WireGuard tunnel and the tunnel policy
	// programs on it. The programs read the policy and enforcement maps
	// (a.maps.Policy, a.maps.Enforcement) and allow everything until
	// something fills them.
	if err := a.newDatapath(); err != nil {
		return nil, err
	}
	if cfg.Mesh != nil {
		a.meshAgent, err = meshagent.New(logger, meshagent.Config{
			MeshAgents: cfg.Mesh.MeshAgents(), Nodes: cfg.Client, NodeName: cfg.NodeName,
			Status: a.meshAgentStatusNow, Heartbeat: cfg.MeshAgentHeartbeat, Registry: cfg.Registry,
		})
		if err != nil {
			a.closeDatapath()
			return nil, err
		}
	}
	return a, nil
}

// Run runs the agent until ctx is done, then stops its parts and closes
// its map handles. The maps stay pinned and keep their entries, so that the
// datapath works on while the agent restarts.
func (a *Agent) Run(ctx context.Context) error {
	defer a.maps.Close()
	defer a.closeDatapath()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var apiLis, metricsLis net.Listener
	var err error
	if a.cfg.APISocket != "-" {
		if apiLis, err = listenUnix(a.cfg.APISocket); err != nil {
			return err
		}
	}
	if a.cfg.MetricsAddress != "-" {
		if metricsLis, err = net.Listen("tcp", a.cfg.MetricsAddress); err != nil {
			if apiLis != nil {
				apiLis.Close()
			}
			return fmt.Errorf("listen for metrics on %s: %w", a.cfg.MetricsAddress, err)
		}
		a.logger.Info("Serving metrics", "address", metricsLis.Addr().String())
	}

	var wg sync.WaitGroup
	a.broadcast.StartRecordingToSink(ctx.Done())
	defer a.broadcast.Shutdown()
	wg.Go(func() { a.mesh.Run(ctx) })
	wg.Go(func() { a.services.Run(ctx) })
	wg.Go(func() { a.ipcache.Run(ctx) })
	wg.Go(func() { a.svcRec.Run(ctx) })
	if a.policy != nil {
		wg.Go(func() { a.policy.Run(ctx) })
	}
	wg.Go(func() { a.initialSync(ctx) })
	a.runDatapath(ctx, &wg)
	if a.meshAgent != nil {
		wg.Go(func() { a.meshAgent.Run(ctx) })
	}
	if apiLis != nil {
		srv := grpc.NewServer()
		agentv1.RegisterAgentServer(srv, &apiServer{a: a})
		wg.Go(func() {
			if err := srv.Serve(apiLis); err != nil {
				a.logger.Error("Local API stopped", logfields.Error, err)
			}
		})
		context.AfterFunc(ctx, srv.Stop)
	}
	if metricsLis != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(a.cfg.Registry, promhttp.HandlerOpts{}))
		if a.cfg.Pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		wg.Go(func() {
			if err := hs.Serve(metricsLis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.logger.Error("Metrics endpoint stopped", logfields.Error, err)
			}
		})
		context.AfterFunc(ctx, func() { hs.Close() })
	}
	a.logger.Info("Agent running", logfields.Node, a.cfg.NodeName, logfields.Cluster, a.cfg.ClusterName, logfields.ClusterID, a.cfg.ClusterID, "bpfRoot", a.cfg.Maps.Root)
	<-ctx.Done()
	wg.Wait()
	a.logger.Info("Agent stopped; the pinned maps keep their entries")
	return nil
}

func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create API socket directory: %w", err)
	}
	// A socket left by an agent that died; nothing else lives at this path.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale API socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on API socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		lis.Close()
		return nil, fmt.Errorf("restrict API socket: %w", err)
	}
	return lis, nil
}

// initialSync waits until the Secret and the local Services were read and
// every cluster of the Secret synced (or was refused), or the timeout
// passed, and then lets the reconcilers prune: until then a restarted
// agent only adds and changes entries, so the pinned maps stay populated.
func (a *Agent) initialSync(ctx context.Context) {
	timeout := time.NewTimer(a.cfg.InitialSyncTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	synced := a.state.SyncChanged()
wait:
	for {
		pending, ok := a.pendingClusters()
		if ok && len(pending) == 0 {
			a.logger.Info("Initial sync complete; pruning the maps")
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-timeout.C:
			if ok {
				a.logger.Warn("Initial sync timed out; pruning the maps anyway", "pending", pending)
				break wait
			}
			// Without the Secret and the local Services nothing is known
			// and pruning would flush the maps: keep waiting for those.
			a.logger.Warn("Still waiting for the clustermesh Secret and the local Services to be read")
			timeout.Reset(a.cfg.InitialSyncTimeout)
		case <-synced:
		case <-tick.C:
		}
	}
	a.ipcache.AllowPrune()
	a.svcRec.AllowPrune()
	if a.policy != nil {
		a.policy.AllowPrune()
	}
	if a.dp.tunnel != nil {
		a.dp.tunnel.AllowPrune()
	}
	a.syncedOnce.Store(true)
}

// pendingClusters lists the clusters of the Secret that have not synced
// yet; ok is false until the Secret and the local Services were read.
func (a *Agent) pendingClusters() (pending []string, ok bool) {
	if !a.services.HasSynced() {
		return nil, false
	}
	st := a.mesh.Status()
	if !st.SecretSeen {
		return nil, false
	}
	for _, c := range st.Clusters {
		if c.State == remotecluster.StateRefused || a.state.EverSynced(c.Cluster) {
			continue
		}
		pending = append(pending, c.Cluster)
	}
	return pending, true
}
