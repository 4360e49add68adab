package certs

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Names of the cert-manager objects.
const (
	CertManagerIssuerName           = "isthmus-ca"
	CertManagerSelfSignedIssuerName = "isthmus-selfsigned"
	CertManagerCACertificateName    = "isthmus-ca"
	CertManagerServerCertName       = "isthmus-apiserver-server"
	CertManagerAdminCertName        = "isthmus-apiserver-admin"
	CertManagerLocalCertName        = "isthmus-local"
)

// CertManagerConfig describes the certificates cert-manager should keep
// issued for one cluster, in place of certificates issued by the CLI.
type CertManagerConfig struct {
	// Cluster is the mesh cluster name; it names the admin and local users.
	Cluster string
	// Namespace defaults to meshconfig.Namespace.
	Namespace string
	// ServerDNSNames and ServerIPs are the names the etcd server
	// certificate is valid for. At least one is needed.
	ServerDNSNames []string
	ServerIPs      []netip.Addr
	// Duration and RenewBefore of the issued certificates. Zero means
	// DefaultCertValidity and a third of it.
	Duration    time.Duration
	RenewBefore time.Duration
	// BootstrapCA adds a self-signed Issuer and a CA Certificate that
	// create the CA Secret. Leave it false when the CA Secret already
	// exists (created by the CLI, or shared across clusters).
	BootstrapCA bool
}

// CertManagerResources are the cert-manager objects of one cluster: an
// Issuer backed by the CA Secret (meshconfig.CASecret) and Certificates
// that keep the server, admin and local Secrets issued.
type CertManagerResources struct {
	// SelfSignedIssuer and CACertificate are set when BootstrapCA is.
	SelfSignedIssuer *cmapi.Issuer
	CACertificate    *cmapi.Certificate

	Issuer *cmapi.Issuer
	Server *cmapi.Certificate
	Admin  *cmapi.Certificate
	Local  *cmapi.Certificate
}

// NewCertManagerResources builds the objects for cfg.
func NewCertManagerResources(cfg CertManagerConfig) (*CertManagerResources, error) {
	if err := protocol.ValidateClusterName(cfg.Cluster); err != nil {
		return nil, err
	}
	if len(cfg.ServerDNSNames) == 0 && len(cfg.ServerIPs) == 0 {
		return nil, errors.New("cert-manager resources: no server DNS name or IP address given; clients could not verify the server")
	}
	if cfg.Namespace == "" {
		cfg.Namespace = meshconfig.Namespace
	}
	if cfg.Duration == 0 {
		cfg.Duration = DefaultCertValidity
	}
	if cfg.RenewBefore == 0 {
		cfg.RenewBefore = cfg.Duration / 3
	}
	if cfg.RenewBefore >= cfg.Duration {
		return nil, fmt.Errorf("cert-manager resources: renewBefore %v must be shorter than duration %v", cfg.RenewBefore, cfg.Duration)
	}
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{
			Name:      name,
			Namespace: cfg.Namespace,
			Labels:    map[string]string{"app.kubernetes.io/part-of": "isthmus"},
		}
	}
	typeIssuer := metav1.TypeMeta{APIVersion: cmapi.SchemeGroupVersion.String(), Kind: cmapi.IssuerKind}
	typeCert := metav1.TypeMeta{APIVersion: cmapi.SchemeGroupVersion.String(), Kind: "Certificate"}
	cert := func(name, secret, cn string, usages ...cmapi.KeyUsage) *cmapi.Certificate {
		return &cmapi.Certificate{
			TypeMeta:   typeCert,
			ObjectMeta: meta(name),
			Spec: cmapi.CertificateSpec{
				CommonName:  cn,
				SecretName:  secret,
				Duration:    &metav1.Duration{Duration: cfg.Duration},
				RenewBefore: &metav1.Duration{Duration: cfg.RenewBefore},
				Usages:      append([]cmapi.KeyUsage{cmapi.UsageDigitalSignature}, usages...),
				PrivateKey: &cmapi.CertificatePrivateKey{
					Algorithm:      cmapi.ECDSAKeyAlgorithm,
					Size:           256,
					Encoding:       cmapi.PKCS8,
					RotationPolicy: cmapi.RotationPolicyAlways,
				},
				IssuerRef: cmmeta.IssuerReference{Name: CertManagerIssuerName, Kind: cmapi.IssuerKind, Group: "cert-manager.io"},
			},
		}
	}
	r := &CertManagerResources{
		Issuer: &cmapi.Issuer{
			TypeMeta:   typeIssuer,
			ObjectMeta: meta(CertManagerIssuerName),
			Spec: cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{
				CA: &cmapi.CAIssuer{SecretName: meshconfig.CASecret},
			}},
		},
		Server: cert(CertManagerServerCertName, meshconfig.ServerCertSecret, ServerCommonName, cmapi.UsageServerAuth),
		Admin:  cert(CertManagerAdminCertName, meshconfig.AdminCertSecret, protocol.AdminUser(cfg.Cluster), cmapi.UsageClientAuth),
		Local:  cert(CertManagerLocalCertName, meshconfig.LocalCertSecret, protocol.LocalUser(cfg.Cluster), cmapi.UsageClientAuth),
	}
	r.Server.Spec.DNSNames = cfg.ServerDNSNames
	for _, ip := range cfg.ServerIPs {
		r.Server.Spec.IPAddresses = append(r.Server.Spec.IPAddresses, ip.String())
	}
	if cfg.BootstrapCA {
		r.SelfSignedIssuer = &cmapi.Issuer{
			TypeMeta:   typeIssuer,
			ObjectMeta: meta(CertManagerSelfSignedIssuerName),
			Spec:       cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{SelfSigned: &cmapi.SelfSignedIssuer{}}},
		}
		ca := cert(CertManagerCACertificateName, meshconfig.CASecret, "isthmus-ca-"+cfg.Cluster, cmapi.UsageCertSign, cmapi.UsageCRLSign)
		ca.Spec.IsCA = true
		ca.Spec.Duration = &metav1.Duration{Duration: DefaultCAValidity}
		ca.Spec.RenewBefore = &metav1.Duration{Duration: DefaultCAValidity / 10}
		// Rotating the CA key would invalidate every certificate handed to
		// remote clusters; keep it.
		ca.Spec.PrivateKey.RotationPolicy = cmapi.RotationPolicyNever
		ca.Spec.IssuerRef.Name = CertManagerSelfSignedIssuerName
		r.CACertificate = ca
	}
	return r, nil
}

// Objects returns the objects in the order they should be applied.
func (r *CertManagerResources) Objects() []runtime.Object {
	var objs []runtime.Object
	if r.SelfSignedIssuer != nil {
		objs = append(objs, r.SelfSignedIssuer, r.CACertificate)
	}
	return append(objs, r.Issuer, r.Server, r.Admin, r.Local)
}

// YAML returns the objects as one multi-document YAML manifest.
func (r *CertManagerResources) YAML() ([]byte, error) {
	var out []byte
	for _, o := range r.Objects() {
		b, err := yaml.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("encode %T: %w", o, err)
		}
		out = append(out, "---\n"...)
		out = append(out, b...)
	}
	return out, nil
}
