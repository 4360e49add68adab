package apiserver

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"time"

	"k8s.io/client-go/rest"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Config is everything the apiserver runs with; the command fills it from
// flags.
type Config struct {
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters uint32

	// Kube reaches the cluster's kube-apiserver. Required.
	Kube *rest.Config

	// Embedded etcd (when EtcdEndpoints is empty).
	DataDir string
	// ListenAddress is host:port for etcd clients (agents, remote
	// clusters). Port 0 picks a free port.
	ListenAddress string
	// ServerCertFile and ServerKeyFile are etcd's server certificate; it
	// must be valid for 127.0.0.1, which the apiserver itself dials.
	ServerCertFile string
	ServerKeyFile  string
	// ClientCAFile holds the CAs whose client certificates get in; the
	// apiserver also verifies the server certificate against it.
	ClientCAFile string
	// AdminCertFile and AdminKeyFile are the apiserver's own client
	// certificate, CN admin-<cluster>.
	AdminCertFile string
	AdminKeyFile  string
	// MaxTxnOps bounds operations per etcd transaction (and configures the
	// embedded etcd to accept as many). Zero means 128.
	MaxTxnOps int

	// External etcd (when EtcdEndpoints is set).
	EtcdEndpoints []string
	EtcdCAFile    string
	EtcdCertFile  string
	EtcdKeyFile   string
	// EtcdManageAuth sets up users and roles in the external etcd; that
	// needs a root-role certificate.
	EtcdManageAuth bool

	// RemoteClusters get a remote-<c> etcd user each, besides the shared
	// remote user.
	RemoteClusters []string

	// HealthAddress serves /healthz, /readyz and /metrics. Empty: not
	// served.
	HealthAddress string
	// AdvertiseEndpoints are the https URLs remote clusters reach this
	// etcd at, published in the isthmus-config ConfigMap for
	// `isthmus connect`. Empty: the ConfigMap's mesh-endpoints is left
	// alone.
	AdvertiseEndpoints []string

	// HeartbeatInterval is how often cilium/.heartbeat is rewritten. Zero
	// means a minute.
	HeartbeatInterval time.Duration
	// IdentityGrace is how long an unused identity stays allocated. Zero
	// means identity.DefaultGrace.
	IdentityGrace time.Duration
	// IdentityGCInterval is how often unused identities are looked for.
	// Zero means a minute.
	IdentityGCInterval time.Duration
}

func (c *Config) external() bool { return len(c.EtcdEndpoints) > 0 }

// Validate checks the configuration and says what to fix.
func (c *Config) Validate() error {
	var errs []error
	if err := protocol.ValidateClusterName(c.ClusterName); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-name: %w", err))
	}
	if err := protocol.ValidateClusterID(c.ClusterID, c.MaxConnectedClusters); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-id/--max-connected-clusters: %w", err))
	}
	for _, r := range c.RemoteClusters {
		if err := protocol.ValidateClusterName(r); err != nil {
			errs = append(errs, fmt.Errorf("--remote-cluster: %w", err))
		}
	}
	if c.Kube == nil {
		errs = append(errs, errors.New("no Kubernetes client config"))
	}
	if c.external() {
		for _, ep := range c.EtcdEndpoints {
			if u, err := url.Parse(ep); err != nil || u.Scheme != "https" || u.Host == "" {
				errs = append(errs, fmt.Errorf("--etcd-endpoints: %q is not an https URL; the mesh etcd is only reached over TLS", ep))
			}
		}
		if c.EtcdCertFile == "" || c.EtcdKeyFile == "" {
			errs = append(errs, errors.New("--etcd-cert-file and --etcd-key-file are required with --etcd-endpoints"))
		}
	} else {
		if c.DataDir == "" {
			errs = append(errs, errors.New("--data-dir is required for the embedded etcd"))
		}
		if _, _, err := net.SplitHostPort(c.ListenAddress); err != nil {
			errs = append(errs, fmt.Errorf("--listen-address %q: %w", c.ListenAddress, err))
		}
		for flag, v := range map[string]string{
			"--tls-cert-file": c.ServerCertFile, "--tls-key-file": c.ServerKeyFile, "--tls-client-ca-file": c.ClientCAFile,
			"--admin-cert-file": c.AdminCertFile, "--admin-key-file": c.AdminKeyFile,
		} {
			if v == "" {
				errs = append(errs, fmt.Errorf("%s is required for the embedded etcd", flag))
			}
		}
	}
	for _, ep := range c.AdvertiseEndpoints {
		if u, err := url.Parse(ep); err != nil || u.Scheme != "https" || u.Host == "" {
			errs = append(errs, fmt.Errorf("--advertise-endpoint: %q is not an https URL", ep))
		}
	}
	if c.MaxTxnOps < 0 {
		errs = append(errs, fmt.Errorf("--etcd-max-txn-ops %d is negative", c.MaxTxnOps))
	}
	return errors.Join(errs...)
}
