package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/isthmus-mesh/isthmus/internal/embedetcd"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// Component names, as they appear in logs/ and errors.
const (
	APIServer         = "kube-apiserver"
	ControllerManager = "kube-controller-manager"
	Scheduler         = "kube-scheduler"
	Etcd              = "etcd"
)

// ControlPlane is a running control plane. Its methods are safe for
// concurrent use.
type ControlPlane struct {
	cfg      Config
	logger   *slog.Logger
	endpoint string // https://host:port
	pki      pki
	dirs     dirs

	mu      sync.Mutex // guards the fields below
	etcd    *embedetcd.Server
	procs   []*process // started order; stopped in reverse
	stopped bool
}

// dirs are the subdirectories of DataDir.
type dirs struct {
	etcd, pki, kubeconfig, logs, certs string
}

// LogPath returns the log file of a component (APIServer,
// ControllerManager, Scheduler or Etcd) under the data directory.
func (cp *ControlPlane) LogPath(component string) string {
	return filepath.Join(cp.dirs.logs, component+".log")
}

// Start runs the control plane and returns once every component it runs is
// ready. ctx bounds only the start: the control plane runs until Stop. On
// failure everything started is stopped again, and the error carries the
// tail of the failing component's log.
func Start(ctx context.Context, logger *slog.Logger, cfg Config) (*ControlPlane, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	root, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{
		cfg:    cfg,
		logger: logger.With(logfields.Cluster, cfg.Name),
		dirs: dirs{
			etcd:       filepath.Join(root, "etcd"),
			pki:        filepath.Join(root, "pki"),
			kubeconfig: filepath.Join(root, "kubeconfig"),
			logs:       filepath.Join(root, "logs"),
			certs:      filepath.Join(root, "serving-certs"),
		},
	}
	for _, d := range []string{cp.dirs.etcd, cp.dirs.pki, cp.dirs.kubeconfig, cp.dirs.logs, cp.dirs.certs} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("start control plane: %w", err)
		}
	}
	if err := cp.start(ctx); err != nil {
		stopErr := cp.Stop(context.Background())
		return nil, errors.Join(err, stopErr)
	}
	return cp, nil
}

func (cp *ControlPlane) start(ctx context.Context) error {
	begin := time.Now()
	if err := cp.pki.generate(cp.cfg, cp.dirs.pki); err != nil {
		return fmt.Errorf("generate certificates: %w", err)
	}

	etcd, err := embedetcd.Start(ctx, embedetcd.Config{
		DataDir:      cp.dirs.etcd,
		LogFile:      cp.LogPath(Etcd),
		StartTimeout: cp.cfg.StartTimeout,
		TLS: &embedetcd.TLS{
			CertFile:     cp.pki.etcdServer.CertFile,
			KeyFile:      cp.pki.etcdServer.KeyFile,
			ClientCAFile: cp.pki.etcdCAFile,
		},
	})
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.etcd = etcd
	cp.mu.Unlock()
	cp.logger.Debug("etcd ready", logfields.Endpoint, etcd.Endpoints()[0], logfields.Duration, time.Since(begin))

	apiStart := time.Now()
	if err := cp.startWithPort(ctx, APIServer, cp.cfg.BindAddress, cp.cfg.SecurePort, func(port int) (*process, string, error) {
		cp.endpoint = "https://" + net.JoinHostPort(cp.cfg.clientHost().String(), strconv.Itoa(port))
		p, err := startProcess(APIServer, cp.cfg.Binaries.APIServer, cp.apiServerArgs(port, etcd.Endpoints()), cp.LogPath(APIServer))
		return p, cp.endpoint + "/readyz", err
	}); err != nil {
		return err
	}
	cp.logger.Info("kube-apiserver ready", logfields.Endpoint, cp.endpoint, logfields.Duration, time.Since(apiStart))

	if err := cp.writeKubeconfigs(); err != nil {
		return fmt.Errorf("write kubeconfigs: %w", err)
	}

	// The controller manager and the scheduler start side by side.
	var wg sync.WaitGroup
	var cmErr, schedErr error
	if cp.cfg.ControllerManager {
		wg.Go(func() {
			cmErr = cp.startWithPort(ctx, ControllerManager, loopback, 0, func(port int) (*process, string, error) {
				p, err := startProcess(ControllerManager, cp.cfg.Binaries.ControllerManager, cp.controllerManagerArgs(port), cp.LogPath(ControllerManager))
				return p, "https://" + net.JoinHostPort(loopback.String(), strconv.Itoa(port)) + "/healthz", err
			})
		})
	}
	if cp.cfg.Scheduler {
		wg.Go(func() {
			schedErr = cp.startWithPort(ctx, Scheduler, loopback, 0, func(port int) (*process, string, error) {
				args, err := cp.schedulerArgs(port)
				if err != nil {
					return nil, "", err
				}
				p, err := startProcess(Scheduler, cp.cfg.Binaries.Scheduler, args, cp.LogPath(Scheduler))
				return p, "https://" + net.JoinHostPort(loopback.String(), strconv.Itoa(port)) + "/healthz", err
			})
		})
	}
	wg.Wait()
	if err := errors.Join(cmErr, schedErr); err != nil {
		return err
	}
	cp.logger.Info("control plane ready", logfields.Duration, time.Since(begin),
		"controllerManager", cp.cfg.ControllerManager, "scheduler", cp.cfg.Scheduler)
	return nil
}

// portAttempts is how often a component is restarted on another free port
// when some other process took the one it was given between our probe and
// its bind.
const portAttempts = 3

// startWithPort starts a component listening on port (a free one when 0)
// and waits until its health URL answers; run starts the process for a
// port and returns the URL. A lost race for a free port is retried.
func (cp *ControlPlane) startWithPort(ctx context.Context, name string, host netip.Addr, port int, run func(port int) (*process, string, error)) error {
	for attempt := 1; ; attempt++ {
		p := port
		if p == 0 {
			var err error
			if p, err = freePort(host); err != nil {
				return fmt.Errorf("start %s: %w", name, err)
			}
		}
		proc, url, err := run(p)
		if err != nil {
			return err
		}
		err = waitReady(ctx, proc, cp.pki.probeClient(name == APIServer), url, cp.cfg.StartTimeout)
		if err == nil {
			cp.mu.Lock()
			cp.procs = append(cp.procs, proc)
			cp.mu.Unlock()
			return nil
		}
		_ = proc.stop(context.Background(), cp.cfg.StopGracePeriod)
		if !errors.Is(err, errAddrInUse) || port != 0 || attempt == portAttempts {
			return err
		}
		cp.logger.Warn("port taken, retrying", logfields.Component, name, "port", p)
	}
}

// freePort asks the kernel for a free TCP port on host.
func freePort(host netip.Addr) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host.String(), "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (cp *ControlPlane) apiServerArgs(port int, etcdEndpoints []string) []string {
	c := cp.cfg
	return []string{
		"--bind-address=" + c.BindAddress.String(),
		"--secure-port=" + strconv.Itoa(port),
		"--advertise-address=" + c.AdvertiseAddress.String(),
		"--cert-dir=" + cp.dirs.certs,
		"--tls-cert-file=" + cp.pki.apiServer.CertFile,
		"--tls-private-key-file=" + cp.pki.apiServer.KeyFile,
		"--client-ca-file=" + cp.pki.caFile,
		"--etcd-servers=" + strings.Join(etcdEndpoints, ","),
		"--etcd-cafile=" + cp.pki.etcdCAFile,
		"--etcd-certfile=" + cp.pki.etcdClient.CertFile,
		"--etcd-keyfile=" + cp.pki.etcdClient.KeyFile,
		"--service-cluster-ip-range=" + c.ServiceClusterIPRange.String(),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + cp.pki.saPublicFile,
		"--service-account-signing-key-file=" + cp.pki.saPrivateFile,
		"--requestheader-client-ca-file=" + cp.pki.frontProxyCAFile,
		"--requestheader-allowed-names=" + frontProxyClientName,
		"--requestheader-username-headers=X-Remote-User",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--proxy-client-cert-file=" + cp.pki.frontProxyClient.CertFile,
		"--proxy-client-key-file=" + cp.pki.frontProxyClient.KeyFile,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=1",
	}
}

func (cp *ControlPlane) controllerManagerArgs(port int) []string {
	c := cp.cfg
	kc := cp.kubeconfigPath(ControllerManager)
	args := []string{
		"--kubeconfig=" + kc,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=" + loopback.String(),
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + cp.pki.controllerManagerServing.CertFile,
		"--tls-private-key-file=" + cp.pki.controllerManagerServing.KeyFile,
		"--cluster-name=" + c.Name,
		"--root-ca-file=" + cp.pki.caFile,
		"--cluster-signing-cert-file=" + cp.pki.caFile,
		"--cluster-signing-key-file=" + cp.pki.caKeyFile,
		"--service-account-private-key-file=" + cp.pki.saPrivateFile,
		"--use-service-account-credentials=true",
		"--service-cluster-ip-range=" + c.ServiceClusterIPRange.String(),
		// One instance: leader election would only delay a restart by
		// the lease duration.
		"--leader-elect=false",
		"--profiling=false",
		"--v=1",
	}
	if c.ClusterCIDR.IsValid() {
		args = append(args,
			"--allocate-node-cidrs=true",
			"--cluster-cidr="+c.ClusterCIDR.String(),
			"--node-cidr-mask-size="+strconv.Itoa(c.NodeCIDRMaskSize),
		)
	}
	return args
}

func (cp *ControlPlane) schedulerArgs(port int) ([]string, error) {
	kc := cp.kubeconfigPath(Scheduler)
	// The scheduler's client and leader-election settings have moved
	// from flags (deprecated) to its configuration file.
	config := filepath.Join(cp.dirs.kubeconfig, "kube-scheduler-config.yaml")
	data := "apiVersion: kubescheduler.config.k8s.io/v1\n" +
		"kind: KubeSchedulerConfiguration\n" +
		"clientConnection:\n  kubeconfig: " + strconv.Quote(kc) + "\n" +
		"leaderElection:\n  leaderElect: false\n" +
		"enableProfiling: false\n"
	if err := os.WriteFile(config, []byte(data), 0o600); err != nil {
		return nil, fmt.Errorf("write scheduler configuration: %w", err)
	}
	return []string{
		"--config=" + config,
		"--authentication-kubeconfig=" + kc,
		"--authorization-kubeconfig=" + kc,
		"--bind-address=" + loopback.String(),
		"--secure-port=" + strconv.Itoa(port),
		"--tls-cert-file=" + cp.pki.schedulerServing.CertFile,
		"--tls-private-key-file=" + cp.pki.schedulerServing.KeyFile,
		"--v=1",
	}, nil
}

// Endpoint returns the apiserver's URL, e.g. https://127.0.0.1:38211.
func (cp *ControlPlane) Endpoint() string { return cp.endpoint }

// Name returns the cluster name.
func (cp *ControlPlane) Name() string { return cp.cfg.Name }

// CACertPEM returns the cluster CA certificate: the apiserver's serving
// certificate and every client certificate it accepts chain to it.
func (cp *ControlPlane) CACertPEM() []byte { return append([]byte(nil), cp.pki.ca.certPEM...) }

// RESTConfig returns a fresh client configuration authenticated as the
// admin (group system:masters).
func (cp *ControlPlane) RESTConfig() *rest.Config {
	return &rest.Config{
		Host: cp.endpoint,
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   cp.CACertPEM(),
			CertData: append([]byte(nil), cp.pki.admin.CertPEM...),
			KeyData:  append([]byte(nil), cp.pki.admin.KeyPEM...),
		},
		// Tests and the lab create objects in bursts; client-go's
		// default 5 QPS would make them wait on the client.
		QPS:   100,
		Burst: 200,
	}
}

// KubeconfigPath returns the admin kubeconfig written at start, whose
// current context is Config.ContextName.
func (cp *ControlPlane) KubeconfigPath() string { return cp.kubeconfigPath("admin") }

// Kubeconfig returns an admin kubeconfig with one context, named
// contextName, with its credentials inline; callers merging several
// clusters into one file (the lab) name the contexts.
func (cp *ControlPlane) Kubeconfig(contextName string) *clientcmdapi.Config {
	return cp.kubeconfig(contextName, cp.pki.admin)
}

// IssueClientCert issues a client certificate the apiserver accepts, for
// user commonName in the given groups (e.g. "system:node:n1" in
// "system:nodes" for a node agent), and returns it and its key as PEM.
func (cp *ControlPlane) IssueClientCert(commonName string, groups ...string) (certPEM, keyPEM []byte, err error) {
	kp, err := cp.pki.ca.issue(leaf{commonName: commonName, organizations: groups, client: true})
	if err != nil {
		return nil, nil, err
	}
	return kp.CertPEM, kp.KeyPEM, nil
}

// Stop stops the scheduler, the controller manager, the apiserver (each
// SIGTERM, then SIGKILL after the grace period) and etcd, and waits for
// them. It returns errors for components that had exited on their own.
// When ctx ends, components still running are killed at once instead of
// after the grace period; Stop still waits for them, so none is left
// behind. Safe to call more than once.
func (cp *ControlPlane) Stop(ctx context.Context) error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.stopped {
		return nil
	}
	cp.stopped = true
	var errs []error
	for i := len(cp.procs) - 1; i >= 0; i-- {
		p := cp.procs[i]
		if p.exited() {
			errs = append(errs, fmt.Errorf("%w; last lines of %s:\n%s", p.exitError(), p.logPath, p.logTail()))
			continue
		}
		if err := p.stop(ctx, cp.cfg.StopGracePeriod); err != nil {
			errs = append(errs, err)
		}
	}
	cp.procs = nil
	if cp.etcd != nil {
		cp.etcd.Close()
		cp.etcd = nil
	}
	return errors.Join(errs...)
}
