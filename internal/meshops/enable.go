package meshops

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// EnableOptions say what a cluster is in the mesh.
type EnableOptions struct {
	// ClusterName and ClusterID identify the cluster in the mesh; both
	// must be unique among the clusters it connects to. Required.
	ClusterName string
	ClusterID   uint32
	// MaxConnectedClusters is 255 or 511 and must be the same on every
	// cluster of a mesh. Zero means 255.
	MaxConnectedClusters uint32
	// MeshEndpoints are the https URLs other clusters reach this
	// cluster's mesh etcd at; their hosts go into the server certificate.
	// Empty keeps the endpoints already published (by an earlier enable or
	// by the mesh apiserver's --advertise-endpoint).
	MeshEndpoints []string
	// ServerSANs are more DNS names or IP addresses for the server
	// certificate, besides the in-cluster Service names, loopback and the
	// endpoints' hosts. Names only accumulate: a certificate issued again
	// keeps the names of the one it replaces.
	ServerSANs []string
	// CertValidity is the lifetime of issued certificates. Zero means
	// certs.DefaultCertValidity.
	CertValidity time.Duration
	// DryRun checks everything and reports what would change, writing
	// nothing.
	DryRun bool
}

// EnableResult says what Enable did.
type EnableResult struct {
	Context string     `json:"context"`
	Config  MeshConfig `json:"config"`
	// Changes lists what was written (or would be, in a dry run); empty
	// when the cluster was already enabled this way.
	Changes []Change `json:"changes"`
	// Notes are things the user should know, e.g. that the cluster's own
	// clustermesh entry waits for a mesh endpoint.
	Notes []string `json:"notes,omitempty"`
}

// ErrAlreadyEnabledOtherwise is wrapped by Enable's error when the cluster
// is already enabled with another name, ID or maxConnectedClusters.
var ErrAlreadyEnabledOtherwise = errors.New("cluster already enabled with other values")

func (o *EnableOptions) validate() (MeshConfig, error) {
	var errs []error
	mc := MeshConfig{ClusterName: o.ClusterName, ClusterID: o.ClusterID, MaxConnectedClusters: o.MaxConnectedClusters}
	if mc.MaxConnectedClusters == 0 {
		mc.MaxConnectedClusters = protocol.MaxConnectedClusters255
	}
	if err := protocol.ValidateClusterName(mc.ClusterName); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-name: %w", err))
	}
	if err := protocol.ValidateClusterID(mc.ClusterID, mc.MaxConnectedClusters); err != nil {
		errs = append(errs, fmt.Errorf("--cluster-id/--max-connected-clusters: %w", err))
	}
	for _, ep := range o.MeshEndpoints {
		if err := ValidateMeshEndpoint(ep); err != nil {
			errs = append(errs, fmt.Errorf("--mesh-endpoint: %w", err))
		}
	}
	for _, s := range o.ServerSANs {
		if err := validateSAN(s); err != nil {
			errs = append(errs, err)
		}
	}
	if o.CertValidity < 0 {
		errs = append(errs, fmt.Errorf("certificate validity %v is negative", o.CertValidity))
	}
	mc.MeshEndpoints = slices.Clone(o.MeshEndpoints)
	if len(errs) > 0 {
		return mc, &CheckError{Problems: errs}
	}
	return mc, nil
}

// Enable prepares cluster c for the mesh: namespace isthmus-system, the
// mesh CA (kept when it exists: a CA is never replaced), the mesh
// apiserver's server certificate, the admin and local client certificates,
// the cluster's own entry in the clustermesh Secret (once a mesh endpoint
// is known), the isthmus.dev CRDs (MeshNetworkPolicy, MeshAgent) and the
// isthmus-config ConfigMap, written last so that a cluster whose ConfigMap
// exists is completely enabled.
//
// It refuses an invalid name or ID, and a cluster already enabled with
// another name, ID or maxConnectedClusters, before writing anything.
// Running it again changes nothing, except to renew certificates that are
// due and to add server names.
func Enable(ctx context.Context, c *Cluster, opts EnableOptions) (*EnableResult, error) {
	want, err := opts.validate()
	if err != nil {
		return nil, err
	}
	res := &EnableResult{Context: c.context}
	now := time.Now()

	// Read everything first.
	cm, err := c.getConfigMap(ctx, meshconfig.ConfigMapName)
	if err != nil {
		return nil, err
	}
	if cm != nil {
		if err := checkSameIdentity(c, cm.Data, want); err != nil {
			return nil, err
		}
		var published []string
		for _, ep := range strings.Split(cm.Data[meshconfig.KeyMeshEndpoints], ",") {
			if ep = strings.TrimSpace(ep); ep != "" {
				published = append(published, ep)
			}
		}
		switch {
		case len(want.MeshEndpoints) == 0:
			// Keep what is published, valid or not: it is not ours to drop.
			want.MeshEndpoints = published
		case len(published) > 0 && !slices.Equal(published, want.MeshEndpoints):
			readers, err := c.getConfigMap(ctx, meshconfig.RemoteReadersConfigMap)
			if err != nil {
				return nil, err
			}
			if readers != nil && len(readers.Data) > 0 {
				res.Notes = append(res.Notes, fmt.Sprintf("the mesh endpoints change from %s: clusters %s still dial the old ones until you re-run `isthmus connect` with each of them",
					strings.Join(published, ","), strings.Join(slices.Sorted(maps.Keys(readers.Data)), ", ")))
			}
		}
	}
	res.Config = want
	secrets := map[string]*corev1.Secret{}
	for _, name := range []string{meshconfig.CASecret, meshconfig.ServerCertSecret, meshconfig.AdminCertSecret, meshconfig.LocalCertSecret} {
		if secrets[name], err = c.getSecret(ctx, name); err != nil {
			return nil, err
		}
	}

	// Decide and issue everything in memory.
	var ca *certs.CA
	newCA := secrets[meshconfig.CASecret] == nil
	if newCA {
		if ca, err = certs.NewCA("isthmus-ca-"+want.ClusterName, 0); err != nil {
			return nil, err
		}
	} else {
		certPEM, keyPEM := secretKeyPair(secrets[meshconfig.CASecret])
		if ca, err = certs.LoadCA(certPEM, keyPEM); err != nil {
			return nil, fmt.Errorf("%s: Secret %s/%s exists but holds no usable CA (%w); it was left as it is, since replacing a mesh CA breaks every connection it signed. Fix it, or delete it to have enable create a new CA and then re-run connect for every connection of this cluster",
				c, meshconfig.Namespace, meshconfig.CASecret, err)
		}
	}
	names := defaultServerNames()
	names.addEndpointHosts(want.MeshEndpoints)
	for _, s := range opts.ServerSANs {
		names.add(s)
	}
	type issued struct {
		secret, reason string
		kp             *certs.KeyPair
	}
	var toWrite []issued
	if reason := serverCertReason(ca, secrets[meshconfig.ServerCertSecret], &names, now); reason != "" {
		kp, err := ca.Issue(certs.Request{CommonName: certs.ServerCommonName, Usage: certs.UsageServer, DNSNames: names.DNS, IPs: names.IPs, Validity: opts.CertValidity})
		if err != nil {
			return nil, err
		}
		toWrite = append(toWrite, issued{meshconfig.ServerCertSecret, issueReason("server certificate", reason), kp})
	}
	var localCertPEM, localKeyPEM []byte
	for _, cl := range []struct{ secret, user string }{
		{meshconfig.AdminCertSecret, protocol.AdminUser(want.ClusterName)},
		{meshconfig.LocalCertSecret, protocol.LocalUser(want.ClusterName)},
	} {
		s := secrets[cl.secret]
		certPEM, keyPEM := secretKeyPair(s)
		_, reason := keepable(ca, certPEM, keyPEM, cl.user, x509.ExtKeyUsageClientAuth, now)
		if reason == "" && !bytesEqual(s.Data[meshconfig.KeyCACert], ca.CertPEM()) {
			reason = "ca.crt is not the mesh CA"
		}
		if reason != "" {
			kp, err := ca.Issue(certs.Request{CommonName: cl.user, Usage: certs.UsageClient, Validity: opts.CertValidity})
			if err != nil {
				return nil, err
			}
			toWrite = append(toWrite, issued{cl.secret, issueReason(cl.user+" client certificate", reason), kp})
			certPEM, keyPEM = kp.CertPEM, kp.KeyPEM
		}
		if cl.secret == meshconfig.LocalCertSecret {
			localCertPEM, localKeyPEM = certPEM, keyPEM
		}
	}

	// Write: the CA first, the ConfigMap last.
	w := writer{c: c, dryRun: opts.DryRun, changes: &res.Changes}
	if err := w.ensureNamespace(ctx); err != nil {
		return nil, err
	}
	if newCA {
		if err := w.createSecret(ctx, meshconfig.CASecret, corev1.SecretTypeTLS, map[string][]byte{
			meshconfig.KeyTLSCert: ca.CertPEM(), meshconfig.KeyTLSKey: ca.KeyPEM(),
		}, "new mesh CA"); err != nil {
			return nil, err
		}
	}
	for _, is := range toWrite {
		data := tlsSecretData(is.kp, ca)
		err := w.editSecret(ctx, is.secret, corev1.SecretTypeTLS, is.reason, func(d map[string][]byte) error {
			clear(d)
			for k, v := range data {
				d[k] = v
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	if len(want.MeshEndpoints) > 0 {
		own := meshconfig.ClusterEntry{Cluster: want.ClusterName, Endpoints: want.MeshEndpoints, CA: ca.CertPEM(), Cert: localCertPEM, Key: localKeyPEM}
		if err := w.putEntries(ctx, "own entry, read by the cluster's agents", []meshconfig.ClusterEntry{own}); err != nil {
			return nil, err
		}
	} else {
		res.Notes = append(res.Notes, fmt.Sprintf("no mesh endpoint is known yet, so the agents cannot read this cluster's own state: pass --mesh-endpoint https://<address>:<port> (reachable from the other clusters), or start the mesh apiserver with --advertise-endpoint and run `isthmus connect`, which writes the entry then"))
	}
	if err := w.installCRDs(ctx); err != nil {
		return nil, err
	}
	err = w.editConfigMap(ctx, meshconfig.ConfigMapName, "cluster identity", func(d map[string]string) error {
		for k, v := range want.data() {
			d[k] = v
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// serverCertReason says why the server certificate in Secret s must be
// issued (again), or "" when it can be kept. names are the names it must
// be valid for; the names of a certificate being replaced are added to
// them, so that no name a peer dials is lost.
func serverCertReason(ca *certs.CA, s *corev1.Secret, names *serverNames, now time.Time) string {
	if s == nil {
		return "missing"
	}
	certPEM, keyPEM := secretKeyPair(s)
	cert, reason := keepable(ca, certPEM, keyPEM, certs.ServerCommonName, x509.ExtKeyUsageServerAuth, now)
	if reason != "" {
		if old, err := certs.ParseCertificate(certPEM); err == nil && old.CheckSignatureFrom(ca.Certificate()) == nil {
			names.addCert(old)
		}
		return reason
	}
	missing := names.missingFrom(cert)
	names.addCert(cert)
	switch {
	case !bytesEqual(s.Data[meshconfig.KeyCACert], ca.CertPEM()):
		return "ca.crt is not the mesh CA"
	case len(missing) > 0:
		return "adds " + strings.Join(missing, ", ")
	}
	return ""
}

// checkSameIdentity refuses to change an enabled cluster's name, ID or
// maxConnectedClusters.
func checkSameIdentity(c *Cluster, have map[string]string, want MeshConfig) error {
	wantData := want.data()
	var diffs []string
	for _, k := range []struct{ key, flag string }{
		{meshconfig.KeyClusterName, "--cluster-name"},
		{meshconfig.KeyClusterID, "--cluster-id"},
		{meshconfig.KeyMaxConnectedClusters, "--max-connected-clusters"},
	} {
		if h, ok := have[k.key]; ok && h != wantData[k.key] {
			diffs = append(diffs, fmt.Sprintf("%s %q (you asked for %s %s)", k.key, h, k.flag, wantData[k.key]))
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s is already enabled with %s; nothing was changed. A cluster's name and ID are in every identity and certificate it has handed out, so enable does not change them: re-run with the values above, or, to really re-identify the cluster, disconnect it from every cluster, delete ConfigMap %s/%s and run enable again",
		ErrAlreadyEnabledOtherwise, c, strings.Join(diffs, " and "), meshconfig.Namespace, meshconfig.ConfigMapName)
}

// issueReason says why a certificate is written: new, or replacing one.
func issueReason(what, reason string) string {
	if reason == "missing" {
		return "new " + what
	}
	return what + " reissued: " + reason
}

func bytesEqual(a, b []byte) bool { return string(a) == string(b) }
