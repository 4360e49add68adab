package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"time"
)

// Default lifetimes, used when a validity of zero is given.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
)

// backdate is how far before now a certificate becomes valid, so that peers
// whose clocks lag a little accept it at once.
const backdate = 5 * time.Minute

// ServerCommonName is the common name of the mesh etcd server certificate.
const ServerCommonName = "isthmus-apiserver"

// CA is a mesh certificate authority: it signs the etcd server certificate
// and every client certificate that may read a cluster. It is safe for
// concurrent use.
type CA struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
	keyPEM  []byte
}

// NewCA creates a self-signed CA with an ECDSA P-256 key. A validity of zero
// means DefaultCAValidity.
func NewCA(commonName string, validity time.Duration) (*CA, error) {
	if commonName == "" {
		return nil, errors.New("create CA: common name is empty")
	}
	if validity == 0 {
		validity = DefaultCAValidity
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("create CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	notBefore := time.Now().Add(-backdate)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA: sign: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("create CA: %w", err)
	}
	return newCA(cert, key)
}

// LoadCA returns the CA of a PEM certificate and its PEM private key, as
// stored in the isthmus-ca Secret or written by NewCA.
func LoadCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate: %w", err)
	}
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA key: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA: certificate %q is not a CA certificate", cert.Subject.CommonName)
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("load CA: the private key does not belong to certificate %q", cert.Subject.CommonName)
	}
	return newCA(cert, key)
}

func newCA(cert *x509.Certificate, key crypto.Signer) (*CA, error) {
	keyPEM, err := EncodePrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, key: key, certPEM: EncodeCertificate(cert), keyPEM: keyPEM}, nil
}

// Certificate returns the CA certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM returns the PEM CA certificate: what peers trust.
func (ca *CA) CertPEM() []byte { return clone(ca.certPEM) }

// KeyPEM returns the PEM (PKCS #8) CA private key. Keep it secret.
func (ca *CA) KeyPEM() []byte { return clone(ca.keyPEM) }

// Pool returns a pool holding only this CA.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// KeyPair is an issued certificate and its private key.
type KeyPair struct {
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte
}

// TLSCertificate returns the pair as a tls.Certificate.
func (kp *KeyPair) TLSCertificate() (tls.Certificate, error) {
	return tls.X509KeyPair(kp.CertPEM, kp.KeyPEM)
}

// Usage is what an issued certificate may be used for.
type Usage int

const (
	// UsageClient is a TLS client certificate; its common name is the etcd
	// user.
	UsageClient Usage = iota
	// UsageServer is a TLS server certificate.
	UsageServer
)

// Request describes a certificate to issue.
type Request struct {
	CommonName string
	Usage      Usage
	// DNSNames and IPs are the subject alternative names a server
	// certificate is valid for.
	DNSNames []string
	IPs      []netip.Addr
	// NotBefore is when the certificate becomes valid. Zero means a few
	// minutes ago, to allow for clock skew.
	NotBefore time.Time
	// Validity is how long after NotBefore the certificate stays valid.
	// Zero means DefaultCertValidity.
	Validity time.Duration
}

// Issue signs a new certificate with a fresh ECDSA P-256 key.
func (ca *CA) Issue(req Request) (*KeyPair, error) {
	if req.CommonName == "" {
		return nil, errors.New("issue certificate: common name is empty")
	}
	if req.Validity < 0 {
		return nil, fmt.Errorf("issue certificate %q: validity %v is negative", req.CommonName, req.Validity)
	}
	if req.Validity == 0 {
		req.Validity = DefaultCertValidity
	}
	if req.NotBefore.IsZero() {
		req.NotBefore = time.Now().Add(-backdate)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: generate key: %w", req.CommonName, err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: %w", req.CommonName, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: req.CommonName},
		NotBefore:             req.NotBefore,
		NotAfter:              req.NotBefore.Add(req.Validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		DNSNames:              req.DNSNames,
	}
	for _, ip := range req.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.IP(ip.Unmap().AsSlice()))
	}
	switch req.Usage {
	case UsageClient:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	case UsageServer:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	default:
		return nil, fmt.Errorf("issue certificate %q: unknown usage %d", req.CommonName, req.Usage)
	}
	if tmpl.NotAfter.After(ca.cert.NotAfter) {
		// A certificate cannot outlive its issuer's trust.
		tmpl.NotAfter = ca.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: sign: %w", req.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue certificate %q: %w", req.CommonName, err)
	}
	keyPEM, err := EncodePrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &KeyPair{Cert: cert, CertPEM: EncodeCertificate(cert), KeyPEM: keyPEM}, nil
}

// ServerOptions describes the etcd server certificate.
type ServerOptions struct {
	// CommonName defaults to ServerCommonName.
	CommonName string
	// DNSNames and IPs are the names clients dial. The mesh apiserver dials
	// its own embedded etcd on loopback, so include 127.0.0.1 for it.
	DNSNames []string
	IPs      []netip.Addr
	// Validity of zero means DefaultCertValidity.
	Validity time.Duration
}

// IssueServer issues the etcd server certificate.
func (ca *CA) IssueServer(opts ServerOptions) (*KeyPair, error) {
	if len(opts.DNSNames) == 0 && len(opts.IPs) == 0 {
		return nil, errors.New("issue server certificate: no DNS name or IP address given; clients could not verify it")
	}
	if opts.CommonName == "" {
		opts.CommonName = ServerCommonName
	}
	return ca.Issue(Request{
		CommonName: opts.CommonName,
		Usage:      UsageServer,
		DNSNames:   opts.DNSNames,
		IPs:        opts.IPs,
		Validity:   opts.Validity,
	})
}

// IssueClient issues a client certificate for etcd user (e.g.
// protocol.AdminUser(c), protocol.LocalUser(c), protocol.RemoteUser). A
// validity of zero means DefaultCertValidity.
func (ca *CA) IssueClient(user string, validity time.Duration) (*KeyPair, error) {
	return ca.Issue(Request{CommonName: user, Usage: UsageClient, Validity: validity})
}

func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return n, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ae, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ae.Equal(b)
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }
