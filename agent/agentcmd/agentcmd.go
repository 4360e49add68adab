// Package agentcmd is the isthmus-agent command line: the agent itself
// (flags into agent.Config); the `status`, `dump` and `flows` subcommands,
// which read the running agent's local API; and the hidden
// `wireguard-device` helper that serves a userspace WireGuard device. It holds flag parsing and output, not
// agent logic.
//
// It must not be imported by anything but cmd/isthmus-agent.
package agentcmd

import (
	"context"
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
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/isthmus-mesh/isthmus/agent"
	"github.com/isthmus-mesh/isthmus/agent/flows"
	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/datapath/bpffs"
	dpmaps "github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/datapath/socklb"
	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
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
	encryption            string
	wgDevice              string
	wgPort                int
	wgMode                string
	wgHelper              bool
	socklbCgroup          string
	flowHistory           int
}

// Values of --encryption.
const (
	encryptionWireGuard = "wireguard"
	encryptionDisabled  = "disabled"
)

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
	f.IntVar(&o.flowHistory, "flow-history", flows.DefaultHistory, "how many of the latest flow events to keep for `isthmus-agent flows`")
	f.StringVar(&o.encryption, "encryption", encryptionWireGuard, `how pods reach other clusters' pods: "wireguard" (an encrypted tunnel to each of their nodes, with cross-cluster policy enforced on it) or "disabled" (no tunnel and no cross-cluster policy; only for networks that route every cluster's pods and need neither)`)
	f.StringVar(&o.wgDevice, "wireguard-device", wireguard.DefaultDeviceName, "name of the WireGuard device; unique on the machine where several nodes share one (userspace devices have a machine-wide control socket)")
	f.IntVar(&o.wgPort, "wireguard-port", wireguard.DefaultListenPort, "UDP port WireGuard listens on; every node of the mesh must use the same (nodes do not publish their port)")
	f.StringVar(&o.wgMode, "wireguard-mode", "auto", "kernel, userspace (embedded wireguard-go) or auto (kernel where the kernel has WireGuard)")
	f.BoolVar(&o.wgHelper, "wireguard-userspace-helper", true, "run a userspace device in a helper process that outlives the agent, so that restarting the agent does not interrupt cross-cluster traffic (the agent starts it, or adopts one left running)")
	f.StringVar(&o.socklbCgroup, "socklb-cgroup", "", `cgroup v2 directory to attach the socket load balancer to (default: the cgroup v2 root, found in /proc/self/mountinfo; "-" to not attach it)`)

	cmd.AddCommand(newStatusCommand(), newDumpCommand(), newFlowsCommand(), newWireGuardDeviceCommand())
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
	restCfg, err := o.restConfig()
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("create Kubernetes client: %w", err)
	}
	mesh, err := meshclient.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	wg, err := o.wireGuard()
	if err != nil {
		return err
	}
	cgroup, err := o.socketLBCgroup()
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
		WireGuard:            wg,
		FlowHistory:          o.flowHistory,
		SocketLBCgroup:       cgroup,
		Mesh:                 mesh,
		PolicyDefaultDeny:    o.policyDefaultDeny,
	})
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

func (o *options) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = o.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load the local cluster's client config (pass --kubeconfig, or run in a pod): %w", err)
	}
	cfg.UserAgent = "isthmus-agent"
	return cfg, nil
}

// wireGuard is the agent's WireGuard configuration from the flags; nil
// with --encryption disabled.
func (o *options) wireGuard() (*wireguard.Config, error) {
	switch o.encryption {
	case encryptionWireGuard:
	case encryptionDisabled:
		return nil, nil
	default:
		return nil, fmt.Errorf("--encryption %q: want %s or %s", o.encryption, encryptionWireGuard, encryptionDisabled)
	}
	cfg := &wireguard.Config{DeviceName: o.wgDevice, ListenPort: o.wgPort}
	switch o.wgMode {
	case "auto":
		cfg.Mode = wireguard.ModeAuto
	case "kernel":
		cfg.Mode = wireguard.ModeKernel
	case "userspace":
		cfg.Mode = wireguard.ModeUserspace
	default:
		return nil, fmt.Errorf("--wireguard-mode %q: want auto, kernel or userspace", o.wgMode)
	}
	if o.wgPort < 1 || o.wgPort > 65535 {
		return nil, fmt.Errorf("--wireguard-port %d: want a UDP port, 1-65535", o.wgPort)
	}
	if o.wgHelper {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find this executable for the WireGuard helper (or pass --wireguard-userspace-helper=false): %w", err)
		}
		cfg.UserspaceHelper = helperCommand(exe, o)
	}
	return cfg, nil
}

// socketLBCgroup is the cgroup the socket LB attaches to, "" for none.
func (o *options) socketLBCgroup() (string, error) {
	switch o.socklbCgroup {
	case "-":
		return "", nil
	case "":
		root, err := socklb.CgroupRoot()
		if err != nil {
			return "", fmt.Errorf("%w (or pass --socklb-cgroup)", err)
		}
		return root, nil
	}
	return o.socklbCgroup, nil
}
