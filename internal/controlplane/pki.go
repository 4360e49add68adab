package controlplane

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"
)

// This file issues the control plane's own certificates. It is deliberately
// not a CA library (the mesh's certificates live in certs/): one cluster CA
// signs the apiserver's serving certificate and every client certificate
// the apiserver accepts; a separate etcd CA keeps the apiserver's storage
// closed to those clients.

// certValidity is long because a lab may run for weeks; these CAs never
// leave the data directory.
const certValidity = 10 * 365 * 24 * time.Hour

// authority is a CA key pair held in memory while the control plane runs.
type authority struct {
	cert    *x509.Certificate
	key     crypto.Signer
	certPEM []byte
}

// keyPair is an issued certificate and its key, PEM-encoded, plus where they
// were written.
type keyPair struct {
	CertPEM, KeyPEM   []byte
	CertFile, KeyFile string
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
}

func newAuthority(commonName string) (*authority, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA %s: %w", commonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &authority{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// leaf describes a certificate to issue.
type leaf struct {
	commonName    string
	organizations []string
	dnsNames      []string
	ips           []net.IP
	server        bool // serverAuth; clients get clientAuth
	client        bool
}

func (ca *authority) issue(l leaf) (keyPair, error) {
	key, err := newKey()
	if err != nil {
		return keyPair{}, err
	}
	sn, err := serial()
	if err != nil {
		return keyPair{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: l.commonName, Organization: l.organizations},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		DNSNames:     l.dnsNames,
		IPAddresses:  l.ips,
	}
	if l.server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	if l.client {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return keyPair{}, fmt.Errorf("issue certificate %s: %w", l.commonName, err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return keyPair{}, err
	}
	return keyPair{
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

// write stores the pair as dir/name.crt and dir/name.key.
func (kp *keyPair) write(dir, name string) error {
	kp.CertFile = filepath.Join(dir, name+".crt")
	kp.KeyFile = filepath.Join(dir, name+".key")
	if err := os.WriteFile(kp.CertFile, kp.CertPEM, 0o644); err != nil {
		return err
	}
	return os.WriteFile(kp.KeyFile, kp.KeyPEM, 0o600)
}

// serviceAccountKeys writes the key pair kube-apiserver signs service
// account tokens with and the controller-manager's token controller uses.
func serviceAccountKeys(dir string) (privFile, pubFile string, err error) {
	key, err := newKey()
	if err != nil {
		return "", "", err
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return "", "", err
	}
	privFile, pubFile = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(privFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(pubFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644); err != nil {
		return "", "", err
	}
	return privFile, pubFile, nil
}

// frontProxyClientName is the apiserver's user name towards aggregated
// APIs.
const frontProxyClientName = "front-proxy-client"

// pki is every key and certificate one control plane uses, written under
// DataDir/pki.
type pki struct {
	ca                       *authority
	caFile, caKeyFile        string
	etcdCAFile               string
	frontProxyCAFile         string
	frontProxyClient         keyPair
	etcdServer, etcdClient   keyPair
	apiServer                keyPair
	admin                    keyPair
	controllerManager        keyPair // client
	scheduler                keyPair // client
	controllerManagerServing keyPair
	schedulerServing         keyPair
	saPrivateFile            string
	saPublicFile             string
}

func (p *pki) generate(c Config, dir string) error {
	var err error
	if p.ca, err = newAuthority(c.Name + "-ca"); err != nil {
		return err
	}
	p.caFile = filepath.Join(dir, "ca.crt")
	p.caKeyFile = filepath.Join(dir, "ca.key")
	if err := os.WriteFile(p.caFile, p.ca.certPEM, 0o644); err != nil {
		return err
	}
	caKeyDER, err := x509.MarshalPKCS8PrivateKey(p.ca.key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(p.caKeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: caKeyDER}), 0o600); err != nil {
		return err
	}

	etcdCA, err := newAuthority(c.Name + "-etcd-ca")
	if err != nil {
		return err
	}
	p.etcdCAFile = filepath.Join(dir, "etcd-ca.crt")
	if err := os.WriteFile(p.etcdCAFile, etcdCA.certPEM, 0o644); err != nil {
		return err
	}

	// The aggregation layer's CA: the apiserver proxies to aggregated
	// APIs with the front-proxy client certificate, and the controller
	// manager and scheduler read this CA to trust such requests; without
	// it they log errors about it all the time.
	frontProxyCA, err := newAuthority(c.Name + "-front-proxy-ca")
	if err != nil {
		return err
	}
	p.frontProxyCAFile = filepath.Join(dir, "front-proxy-ca.crt")
	if err := os.WriteFile(p.frontProxyCAFile, frontProxyCA.certPEM, 0o644); err != nil {
		return err
	}

	local := []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	apiIPs := append([]net.IP{}, local...)
	for _, a := range []netip.Addr{c.BindAddress, c.AdvertiseAddress, c.kubernetesServiceIP()} {
		if !a.IsUnspecified() {
			apiIPs = append(apiIPs, net.IP(a.AsSlice()))
		}
	}
	apiNames := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	for _, san := range c.SANs {
		if ip := net.ParseIP(san); ip != nil {
			apiIPs = append(apiIPs, ip)
		} else {
			apiNames = append(apiNames, san)
		}
	}

	issues := []struct {
		ca   *authority
		kp   *keyPair
		name string
		leaf leaf
	}{
		{etcdCA, &p.etcdServer, "etcd-server", leaf{commonName: "etcd", dnsNames: []string{"localhost"}, ips: local, server: true}},
		{etcdCA, &p.etcdClient, "apiserver-etcd-client", leaf{commonName: "kube-apiserver-etcd-client", client: true}},
		{frontProxyCA, &p.frontProxyClient, "front-proxy-client", leaf{commonName: frontProxyClientName, client: true}},
		{p.ca, &p.apiServer, "apiserver", leaf{commonName: "kube-apiserver", dnsNames: apiNames, ips: apiIPs, server: true}},
		{p.ca, &p.admin, "admin", leaf{commonName: c.Name + "-admin", organizations: []string{"system:masters"}, client: true}},
		{p.ca, &p.controllerManager, "controller-manager", leaf{commonName: "system:kube-controller-manager", client: true}},
		{p.ca, &p.scheduler, "scheduler", leaf{commonName: "system:kube-scheduler", client: true}},
		{p.ca, &p.controllerManagerServing, "controller-manager-serving", leaf{commonName: "kube-controller-manager", dnsNames: []string{"localhost"}, ips: local, server: true}},
		{p.ca, &p.schedulerServing, "scheduler-serving", leaf{commonName: "kube-scheduler", dnsNames: []string{"localhost"}, ips: local, server: true}},
	}
	for _, is := range issues {
		kp, err := is.ca.issue(is.leaf)
		if err != nil {
			return err
		}
		if err := kp.write(dir, is.name); err != nil {
			return err
		}
		*is.kp = kp
	}
	p.saPrivateFile, p.saPublicFile, err = serviceAccountKeys(dir)
	return err
}
