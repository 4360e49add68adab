// Package agentcmd is the isthmus-agent command line: the agent itself
// (flags into agent.Config) and the `status` and `dump` subcommands, which
// read the running agent's local API. It holds flag parsing and output, not
// agent logic.
//
// It must not be imported by anything but cmd/isthmus-agent.
package agentcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/isthmus-mesh/isthmus/agent"
	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/datapath/bpffs"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Main runs the command line and returns the process exit code.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := NewCommand(os.Stdout, os.Stderr)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintf(cmd.ErrOrStderr(), "Error: %v\n", err)
		return 1
	}
	return 0
}

// options are the agent's flags.
type options struct {
	nodeName, clusterName string
	clusterID, maxConn    uint32
	kubeconfig            string
	stateDir              string
	apiSocket             string
	metricsAddress        string
	initialSyncTimeout    time.Duration
	heartbeatTimeout      time.Duration
	clustermeshNamespace  string
	watchNamespace        string
	logLevel              string
	logJSON               bool
	pprof                 bool
	policyDefaultDeny     bool
	maps                  dpmaps.Config
}

// NewCommand returns the isthmus-agent command with its subcommands.
func NewCommand(out, errOut io.Writer) *cobra.Command {
	o := &options{}
	cmd := &cobra.Command{
		Use:   "isthmus-agent",
		Short: "Run the Isthmus node agent",
		Long: `isthmus-agent runs on every node (a DaemonSet). It reads every cluster of
the mesh listed in the isthmus-system/isthmus-clustermesh Secret, its own
included, merges their identities, ipcache, nodes and global services, and
programs the pinned BPF maps the datapath reads.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return o.run(cmd.Context(), cmd.ErrOrStderr())
		},
	}
	cmd.SetOut(out)
	cmd.SetErr(errOut)
	f := cmd.Flags()
	f.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's Kubernetes Node name (default $NODE_NAME)")
	f.StringVar(&o.clusterName, "cluster-name", "", "this cluster's mesh name")
	f.Uint32Var(&o.clusterID, "cluster-id", 0, "this cluster's mesh ID (1..255, or 1..511 with --max-connected-clusters 511)")
	f.Uint32Var(&o.maxConn, "max-connected-clusters", protocol.MaxConnectedClusters255, "the mesh's maxConnectedClusters (255 or 511); every cluster must agree")
	f.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig of the local cluster (default: in-cluster config, else $KUBECONFIG)")
	f.StringVar(&o.maps.Root, "bpf-root", dpmaps.DefaultRoot, "bpffs directory the maps are pinned under")
	f.StringVar(&o.stateDir, "state-dir", agent.DefaultStateDir, "directory for the agent's files")
	f.StringVar(&o.apiSocket, "api-socket", agent.DefaultAPISocket, `unix socket of the local API ("-" to disable)`)
	f.StringVar(&o.metricsAddress, "metrics-address", agent.DefaultMetricsAddress, `host:port of the Prometheus /metrics endpoint ("-" to disable)`)
	f.DurationVar(&o.initialSyncTimeout, "initial-sync-timeout", agent.DefaultInitialSyncTimeout, "how long to wait for every cluster to sync before pruning stale map entries anyway")
	f.DurationVar(&o.heartbeatTimeout, "heartbeat-timeout", 2*time.Minute, "reconnect to a cluster whose heartbeat is older than this (twice the heartbeat interval)")
	f.StringVar(&o.clustermeshNamespace, "clustermesh-namespace", meshconfig.Namespace, "namespace of the isthmus-clustermesh Secret")
	f.StringVar(&o.watchNamespace, "watch-namespace", "", "watch Services and MeshNetworkPolicies in this namespace only (default: all); for tests that share an apiserver")
	_ = f.MarkHidden("watch-namespace")
	f.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	f.BoolVar(&o.logJSON, "log-json", false, "log in JSON instead of text")
	f.BoolVar(&o.pprof, "pprof", false, "serve the Go profiler under /debug/pprof/ on the metrics address")
	f.BoolVar(&o.policyDefaultDeny, "policy-default-deny", false, "mesh-wide default deny: endpoints no MeshNetworkPolicy selects pass no cross-cluster traffic (set it on every node of every cluster)")
	f.Uint32Var(&o.maps.IPCacheMaxEntries, "ipcache-max-entries", dpmaps.DefaultIPCacheMaxEntries, "size of the ipcache map")
	f.Uint32Var(&o.maps.FrontendMaxEntries, "lb-frontend-max-entries", dpmaps.DefaultFrontendMaxEntries, "size of the service frontend map")
	f.Uint32Var(&o.maps.SlotMaxEntries, "lb-slot-max-entries", dpmaps.DefaultSlotMaxEntries, "size of the service backend-slot map")
	f.Uint32Var(&o.maps.BackendMaxEntries, "lb-backend-max-entries", dpmaps.DefaultBackendMaxEntries, "size of the service backend map")
	f.Uint32Var(&o.maps.RevNATMaxEntries, "lb-revnat-max-entries", dpmaps.DefaultRevNATMaxEntries, "size of the socket LB reverse translation map")
	f.Uint32Var(&o.maps.PolicyMaxEntries, "policy-max-entries", dpmaps.DefaultPolicyMaxEntries, "size of the policy map")
	f.Uint32Var(&o.maps.EnforcementMaxEntries, "policy-enforcement-max-entries", dpmaps.DefaultEnforcementMaxEntries, "size of the policy enforcement map")
	f.Uint32Var(&o.maps.CTMaxEntries, "ct-max-entries", dpmaps.DefaultCTMaxEntries, "size of the connection tracking map")
	f.Uint32Var(&o.maps.FlowRingBytes, "flow-ring-bytes", dpmaps.DefaultFlowRingBytes, "size of the flow event ring buffer (a power of two)")

	cmd.AddCommand(newStatusCommand(), newDumpCommand())
	return cmd
}

func (o *options) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", o.logLevel)
	}
	hopts := &slog.HandlerOptions{Level: level}
	if o.logJSON {
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	}
	return slog.New(slog.NewTextHandler(w, hopts)), nil
}

func (o *options) run(ctx context.Context, logOut io.Writer) error {
	logger, err := o.logger(logOut)
	if err != nil {
		return err
	}
	// client-go logs through klog; send it to the same structured log.
	klog.SetSlogLogger(logger.With("component", "client-go"))
	client, policies, err := o.clients()
	if err != nil {
		return err
	}
	// The agent is usually the first to pin anything on a fresh node.
	if strings.HasPrefix(filepath.Clean(o.maps.Root)+"/", bpffs.DefaultMountpoint+"/") {
		if err := bpffs.Mount(bpffs.DefaultMountpoint); err != nil {
			return err
		}
	}
	a, err := agent.New(logger, agent.Config{
		NodeName:             o.nodeName,
		ClusterName:          o.clusterName,
		ClusterID:            o.clusterID,
		MaxConnectedClusters: o.maxConn,
		Client:               client,
		Maps:                 o.maps,
		StateDir:             o.stateDir,
		APISocket:            o.apiSocket,
		MetricsAddress:       o.metricsAddress,
		InitialSyncTimeout:   o.initialSyncTimeout,
		Reader:               agentReaderConfig(o),
		ClusterMeshNamespace: o.clustermeshNamespace,
		ServiceNamespace:     o.watchNamespace,
		Pprof:                o.pprof,
		Policies:             policies,
		PolicyDefaultDeny:    o.policyDefaultDeny,
	})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// clients returns the local cluster's Kubernetes client and its
// isthmus.dev client.
func (o *options) clients() (kubernetes.Interface, *meshclient.Clientset, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("load the local cluster's client config (pass --kubeconfig, or run in a pod): %w", err)
	}
	cfg.UserAgent = "isthmus-agent"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, errors.New("create Kubernetes client: " + err.Error())
	}
	policies, err := meshclient.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("create isthmus.dev client: %w", err)
	}
	return client, policies, nil
}
