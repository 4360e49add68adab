package meshops

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// A certificate is issued again once less than this fraction of its
// lifetime remains, as cert-manager does by default; so a run of enable or
// connect renews what is about to expire and keeps everything else.
const renewFraction = 3

// needsRenewal reports whether less than a third of cert's lifetime is
// left at now.
func needsRenewal(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return now.Add(life / renewFraction).After(cert.NotAfter)
}

// keepable reports why an issued certificate cannot be kept, or "" when it
// can: it must parse, match its key, be signed by ca for usage with common
// name cn, and not be due for renewal.
func keepable(ca *certs.CA, certPEM, keyPEM []byte, cn string, usage x509.ExtKeyUsage, now time.Time) (cert *x509.Certificate, reason string) {
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, "missing"
	}
	cert, err := certs.ParseCertificate(certPEM)
	if err != nil {
		return nil, fmt.Sprintf("unreadable: %v", err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return nil, fmt.Sprintf("key does not match: %v", err)
	}
	if err := cert.CheckSignatureFrom(ca.Certificate()); err != nil {
		return nil, "not signed by the cluster's mesh CA"
	}
	if cert.Subject.CommonName != cn {
		return nil, fmt.Sprintf("common name is %q, not %q", cert.Subject.CommonName, cn)
	}
	if !slices.Contains(cert.ExtKeyUsage, usage) {
		return nil, "wrong key usage"
	}
	if needsRenewal(cert, now) {
		return nil, fmt.Sprintf("expires %s", cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return cert, ""
}

// serverNames are the subject alternative names of a server certificate.
type serverNames struct {
	DNS []string
	IPs []netip.Addr
}

// defaultServerNames are the names the mesh apiserver's etcd is dialled at
// inside the cluster: its Service, and loopback, where the apiserver dials
// its own embedded etcd.
func defaultServerNames() serverNames {
	svc := meshconfig.APIServerService
	ns := meshconfig.Namespace
	return serverNames{
		DNS: []string{svc, svc + "." + ns, svc + "." + ns + ".svc", svc + "." + ns + ".svc.cluster.local", "localhost"},
		IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()},
	}
}

// add adds a DNS name or IP literal, once.
func (n *serverNames) add(name string) {
	if ip, err := netip.ParseAddr(name); err == nil {
		if !slices.Contains(n.IPs, ip.Unmap()) {
			n.IPs = append(n.IPs, ip.Unmap())
		}
		return
	}
	if !slices.Contains(n.DNS, name) {
		n.DNS = append(n.DNS, name)
	}
}

// addEndpointHosts adds the host of each endpoint URL: remote clusters
// verify the server certificate against it.
func (n *serverNames) addEndpointHosts(endpoints []string) {
	for _, ep := range endpoints {
		if u, err := url.Parse(ep); err == nil && u.Hostname() != "" {
			n.add(u.Hostname())
		}
	}
}

// addCert adds every name cert is valid for.
func (n *serverNames) addCert(cert *x509.Certificate) {
	for _, d := range cert.DNSNames {
		n.add(d)
	}
	for _, ip := range cert.IPAddresses {
		if a, ok := netip.AddrFromSlice(ip); ok {
			n.add(a.Unmap().String())
		}
	}
}

// missingFrom returns the names cert is not valid for.
func (n serverNames) missingFrom(cert *x509.Certificate) []string {
	var missing []string
	for _, d := range n.DNS {
		if !slices.Contains(cert.DNSNames, d) {
			missing = append(missing, d)
		}
	}
	for _, ip := range n.IPs {
		if !slices.ContainsFunc(cert.IPAddresses, func(c net.IP) bool { return c.Equal(net.IP(ip.AsSlice())) }) {
			missing = append(missing, ip.String())
		}
	}
	return missing
}

// validateSAN reports whether s can be a subject alternative name.
func validateSAN(s string) error {
	if _, err := netip.ParseAddr(s); err == nil {
		return nil
	}
	if s == "" || len(s) > 253 || !dnsNameRE.MatchString(s) {
		return fmt.Errorf("--server-san %q is neither an IP address nor a DNS name", s)
	}
	return nil
}

// tlsSecretData is the data of a certificate Secret: tls.crt and tls.key
// and, for issued certificates, ca.crt.
func tlsSecretData(kp *certs.KeyPair, ca *certs.CA) map[string][]byte {
	return map[string][]byte{
		meshconfig.KeyTLSCert: kp.CertPEM,
		meshconfig.KeyTLSKey:  kp.KeyPEM,
		meshconfig.KeyCACert:  ca.CertPEM(),
	}
}

// secretKeyPair returns the certificate and key PEM of a TLS Secret.
func secretKeyPair(s *corev1.Secret) (certPEM, keyPEM []byte) {
	if s == nil {
		return nil, nil
	}
	return s.Data[meshconfig.KeyTLSCert], s.Data[meshconfig.KeyTLSKey]
}
