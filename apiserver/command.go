package apiserver

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/isthmus-mesh/isthmus/apiserver/identity"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Main runs the isthmus-apiserver command with the process's arguments and
// returns its exit code. SIGINT and SIGTERM stop it cleanly.
func Main() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := NewCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "isthmus-apiserver:", err)
		return 1
	}
	return 0
}

// NewCommand returns the isthmus-apiserver command.
func NewCommand() *cobra.Command {
	var (
		cfg        Config
		kubeconfig string
		logLevel   string
		logFormat  string
		maxConn    uint32
		clusterID  uint32
	)
	cmd := &cobra.Command{
		Use:   "isthmus-apiserver",
		Short: "Export this cluster's mesh state (identities, pod IPs, nodes, global services) into an mTLS etcd",
		Long: `isthmus-apiserver runs once per cluster. It serves the cluster's mesh etcd
(embedded, or an external cluster with --etcd-endpoints) over TLS with
client-certificate authentication, and keeps in it the cluster's nodes, pod
identities and IPs and global services, in the ClusterMesh key layout.

/readyz answers 200 once the initial export is complete and the synced
canaries are written.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			logger, err := newLogger(logLevel, logFormat)
			if err != nil {
				return err
			}
			// client-go logs through klog; send it to the same structured
			// log (klog is process-wide, and so is this command).
			klog.SetSlogLogger(logger.With(logfields.Component, "client-go"))
			cfg.ClusterID, cfg.MaxConnectedClusters = clusterID, maxConn
			// Name and ID first: the clearest error for the commonest
			// mistake.
			if err := protocol.ValidateClusterName(cfg.ClusterName); err != nil {
				return fmt.Errorf("--cluster-name: %w", err)
			}
			if err := protocol.ValidateClusterID(cfg.ClusterID, cfg.MaxConnectedClusters); err != nil {
				return fmt.Errorf("--cluster-id: %w", err)
			}
			cfg.Kube, err = kubeConfig(kubeconfig)
			if err != nil {
				return err
			}
			s, err := New(logger, cfg)
			if err != nil {
				return err
			}
			return s.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.ClusterName, "cluster-name", "", "name of this cluster in the mesh (lower-case letters, digits and '-', at most 32)")
	f.Uint32Var(&clusterID, "cluster-id", 0, "ID of this cluster in the mesh, unique across it: 1..255, or 1..511 with --max-connected-clusters=511")
	f.Uint32Var(&maxConn, "max-connected-clusters", protocol.MaxConnectedClusters255, "most clusters the mesh may hold: 255 or 511 (the same on every cluster)")
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file of this cluster; empty: the in-cluster config")

	f.StringVar(&cfg.DataDir, "data-dir", "/var/lib/isthmus/etcd", "data directory of the embedded etcd")
	f.StringVar(&cfg.ListenAddress, "listen-address", "0.0.0.0:2379", "host:port the embedded etcd serves mesh clients on (TLS, client certificates)")
	f.StringVar(&cfg.ServerCertFile, "tls-cert-file", "", "etcd server certificate (PEM); must be valid for the address the apiserver dials itself at (127.0.0.1 when listening on all addresses)")
	f.StringVar(&cfg.ServerKeyFile, "tls-key-file", "", "private key of --tls-cert-file")
	f.StringVar(&cfg.ClientCAFile, "tls-client-ca-file", "", "CA certificates (PEM) that etcd client certificates must chain to; also verifies the server certificate")
	f.StringVar(&cfg.AdminCertFile, "admin-cert-file", "", "client certificate of the apiserver's own etcd user, CN admin-<cluster-name>")
	f.StringVar(&cfg.AdminKeyFile, "admin-key-file", "", "private key of --admin-cert-file")
	f.IntVar(&cfg.MaxTxnOps, "etcd-max-txn-ops", 128, "most operations per etcd write transaction; the embedded etcd is configured to accept as many, an external one must allow at least as many (--max-txn-ops)")

	f.StringSliceVar(&cfg.EtcdEndpoints, "etcd-endpoints", nil, "https URLs of an external etcd cluster to use instead of the embedded one")
	f.StringVar(&cfg.EtcdCAFile, "etcd-ca-file", "", "CA certificates (PEM) of the external etcd's server certificate; empty: the system roots")
	f.StringVar(&cfg.EtcdCertFile, "etcd-cert-file", "", "client certificate for the external etcd")
	f.StringVar(&cfg.EtcdKeyFile, "etcd-key-file", "", "private key of --etcd-cert-file")
	f.BoolVar(&cfg.EtcdManageAuth, "etcd-manage-auth", true, "set up the mesh etcd users and roles in the external etcd (needs a root-role certificate); false: they are managed elsewhere")
	f.StringSliceVar(&cfg.RemoteClusters, "remote-cluster", nil, "remote cluster that gets its own read-only etcd user remote-<name> (repeatable); every remote may also use the shared user remote")

	f.StringVar(&cfg.HealthAddress, "health-address", ":9880", "host:port serving /healthz, /readyz and /metrics; empty: off")
	f.StringArrayVar(&cfg.AdvertiseEndpoints, "advertise-endpoint", nil, "https URL remote clusters reach this etcd at (repeatable), published in ConfigMap isthmus-system/isthmus-config for `isthmus connect`")
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 0, "how often cilium/.heartbeat is rewritten (default 1m)")
	f.DurationVar(&cfg.IdentityGrace, "identity-grace-period", identity.DefaultGrace, "how long an identity no pod uses stays allocated before release")
	f.DurationVar(&cfg.IdentityGCInterval, "identity-gc-interval", 0, "how often unused identities are looked for (default 1m)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}

func kubeConfig(path string) (*rest.Config, error) {
	if path == "" {
		c, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("in-cluster Kubernetes config: %w; outside a cluster, pass --kubeconfig", err)
		}
		return c, nil
	}
	c, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig %s: %w", path, err)
	}
	return c, nil
}

func newLogger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}
