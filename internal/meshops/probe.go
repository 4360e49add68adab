package meshops

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// DefaultEndpointTimeout bounds the check of one mesh endpoint.
const DefaultEndpointTimeout = 10 * time.Second

// probeClusters checks, concurrently, that each cluster's mesh endpoints
// answer as that cluster. A cluster passes when at least one endpoint
// answers as it and none answers as another cluster; dead endpoints beside
// a live one become notes.
func probeClusters(ctx context.Context, states []*clusterState, timeout time.Duration) (problems []error, notes []string) {
	type result struct {
		problem error
		notes   []string
	}
	results := make([]result, len(states))
	var wg sync.WaitGroup
	for i, s := range states {
		wg.Go(func() {
			results[i].problem, results[i].notes = probeCluster(ctx, s, timeout)
		})
	}
	wg.Wait()
	for _, r := range results {
		if r.problem != nil {
			problems = append(problems, r.problem)
		}
		notes = append(notes, r.notes...)
	}
	return problems, notes
}

func probeCluster(ctx context.Context, s *clusterState, timeout time.Duration) (problem error, notes []string) {
	// The shared remote user exists on every mesh etcd and may read
	// exactly what a remote reader reads; the remote-<reader> users are
	// only created once connect has granted them.
	kp, err := s.ca.Issue(certs.Request{CommonName: protocol.RemoteUser, Usage: certs.UsageClient, Validity: time.Hour})
	if err != nil {
		return err, nil
	}
	errs := make([]error, len(s.config.MeshEndpoints))
	var wg sync.WaitGroup
	for i, ep := range s.config.MeshEndpoints {
		wg.Go(func() { errs[i] = probeEndpoint(ctx, s, ep, kp, timeout) })
	}
	wg.Wait()
	var failed []string
	reachable := false
	for i, err := range errs {
		var wrong *wrongClusterError
		switch {
		case err == nil:
			reachable = true
		case errors.As(err, &wrong):
			return fmt.Errorf("mesh endpoint %s of %s %w; check mesh-endpoints in its ConfigMap isthmus-system/isthmus-config", s.config.MeshEndpoints[i], s.label(), wrong), nil
		default:
			failed = append(failed, fmt.Sprintf("%s: %v", s.config.MeshEndpoints[i], err))
		}
	}
	if !reachable {
		return fmt.Errorf("no mesh endpoint of %s answers: %s. Check that its mesh apiserver runs and that the address is reachable from here; if the other clusters reach it at an address this machine cannot (a split-horizon network), re-run with --skip-endpoint-check",
			s.label(), strings.Join(failed, "; ")), nil
	}
	for _, f := range failed {
		notes = append(notes, fmt.Sprintf("mesh endpoint %s of %s does not answer (others do)", f, s.label()))
	}
	return nil, notes
}

// wrongClusterError is an endpoint that answers, but not as the cluster
// it was listed for.
type wrongClusterError struct{ msg string }

func (e *wrongClusterError) Error() string { return e.msg }

// probeEndpoint connects to ep with a client certificate of the cluster's
// CA, trusting only that CA, and reads the cluster's cluster-config.
func probeEndpoint(ctx context.Context, s *clusterState, ep string, kp *certs.KeyPair, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cli, err := dialMesh(ctx, s, ep, kp, timeout)
	if err != nil {
		return err
	}
	defer cli.Close()
	key := protocol.ClusterConfigKey(s.config.ClusterName)
	resp, err := cli.Get(ctx, key)
	switch {
	case refused(err):
		return &wrongClusterError{fmt.Sprintf("refuses user %q to read %s (%v): it is not the mesh etcd of %s, or its users were not set up", protocol.RemoteUser, key, err, s.label())}
	case err != nil:
		return fmt.Errorf("read %s: %w", key, err)
	case len(resp.Kvs) == 0:
		return &wrongClusterError{fmt.Sprintf("has no %s: it is the mesh etcd of another cluster, or the mesh apiserver of %s has not published its cluster config yet", key, s.label())}
	}
	cfg, err := protocol.DecodeClusterConfig(s.config.ClusterName, resp.Kvs[0].Value)
	if err != nil {
		return &wrongClusterError{fmt.Sprintf("publishes an invalid cluster config: %v", err)}
	}
	if cfg.ID != s.config.ClusterID || cfg.Capabilities.MaxConnectedClusters != s.config.MaxConnectedClusters {
		return &wrongClusterError{fmt.Sprintf("answers as cluster %q with ID %d and maxConnectedClusters %d, but isthmus-config says ID %d and %d: the mesh apiserver runs with other values than `isthmus enable` recorded",
			s.config.ClusterName, cfg.ID, cfg.Capabilities.MaxConnectedClusters, s.config.ClusterID, s.config.MaxConnectedClusters)}
	}
	return nil
}

// refused reports whether etcd refused a request for the user's sake: the
// user does not exist (yet) or may not read the key.
func refused(err error) bool {
	return errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserNotFound) || errors.Is(err, rpctypes.ErrAuthFailed)
}

// dialMesh connects to the mesh etcd of s at endpoint ep as the user of
// kp, trusting only the mesh CA of s, as an agent does. The TLS handshake
// is made first, so that a wrong CA or name is told from an unreachable
// address (the etcd client would turn either into a timeout); timeout
// bounds it and the etcd client's dial. The caller closes the client.
func dialMesh(ctx context.Context, s *clusterState, ep string, kp *certs.KeyPair, timeout time.Duration) (*clientv3.Client, error) {
	u, err := url.Parse(ep)
	if err != nil {
		return nil, err
	}
	hostport := u.Host
	if u.Port() == "" {
		hostport = net.JoinHostPort(u.Hostname(), "443")
	}
	cert, err := kp.TLSCertificate()
	if err != nil {
		return nil, err
	}
	tlsConfig := &tls.Config{
		RootCAs:      s.ca.Pool(),
		Certificates: []tls.Certificate{cert},
		ServerName:   u.Hostname(),
		MinVersion:   tls.VersionTLS12,
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{}, Config: tlsConfig}
	conn, err := d.DialContext(hctx, "tcp", hostport)
	if err != nil {
		return nil, describeDialError(s, u.Hostname(), err, timeout)
	}
	conn.Close()

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{ep},
		TLS:         tlsConfig,
		DialTimeout: timeout,
		Context:     ctx,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return cli, nil
}

// describeDialError turns a failed TLS dial into what it means here.
func describeDialError(s *clusterState, host string, err error, timeout time.Duration) error {
	var (
		unknownCA x509.UnknownAuthorityError
		hostErr   x509.HostnameError
		invalid   x509.CertificateInvalidError
		netErr    net.Error
		dnsErr    *net.DNSError
	)
	switch {
	case errors.As(err, &unknownCA):
		return &wrongClusterError{fmt.Sprintf("presents a certificate not signed by the mesh CA of %s: the address belongs to another cluster, or its mesh apiserver runs with another CA's certificate", s.label())}
	case errors.As(err, &hostErr):
		return fmt.Errorf("the server certificate is not valid for %q: re-run `isthmus enable --context %s` with the cluster's name and ID and --server-san %s, then let the mesh apiserver pick up the new certificate", host, s.c.context, host)
	case errors.As(err, &invalid):
		return fmt.Errorf("the server certificate is not valid: %v; re-run `isthmus enable --context %s` to renew it", invalid, s.c.context)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("cannot resolve %q: %v", host, dnsErr)
	case errors.Is(err, syscall.ECONNREFUSED):
		return errors.New("connection refused: nothing listens there")
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Errorf("no answer within %s", timeout)
	}
	return err
}
