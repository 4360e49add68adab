package certs

import (
	"bufio"
	"bytes"
	"net/netip"
	"strings"
	"testing"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

func TestCertManagerResourcesRoundTrip(t *testing.T) {
	r, err := NewCertManagerResources(CertManagerConfig{
		Cluster:        "c1",
		ServerDNSNames: []string{"isthmus-apiserver.isthmus-system.svc"},
		ServerIPs:      []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		BootstrapCA:    true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Admin.Spec.CommonName; got != "admin-c1" {
		t.Errorf("admin CN = %q", got)
	}
	if got := r.Local.Spec.CommonName; got != "local-c1" {
		t.Errorf("local CN = %q", got)
	}
	if got := r.Issuer.Spec.CA.SecretName; got != meshconfig.CASecret {
		t.Errorf("issuer secret = %q", got)
	}
	if r.CACertificate.Spec.SecretName != meshconfig.CASecret || !r.CACertificate.Spec.IsCA {
		t.Errorf("CA certificate = %+v", r.CACertificate.Spec)
	}

	scheme := runtime.NewScheme()
	if err := cmapi.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	codecs := serializer.NewCodecFactory(scheme, serializer.EnableStrict)
	manifest, err := r.YAML()
	if err != nil {
		t.Fatal(err)
	}
	// Each document decodes strictly (no unknown field) into the typed
	// object it came from.
	reader := utilyaml.NewYAMLReader(bufioReader(manifest))
	var decoded []runtime.Object
	for {
		doc, err := reader.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(doc)) == 0 || string(bytes.TrimSpace(doc)) == "---" {
			continue
		}
		obj, _, err := codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("decode %s: %v", doc, err)
		}
		decoded = append(decoded, obj)
	}
	want := r.Objects()
	if len(decoded) != len(want) {
		t.Fatalf("manifest holds %d objects, want %d", len(decoded), len(want))
	}
	for i := range want {
		if !equality.Semantic.DeepEqual(decoded[i], want[i]) {
			t.Errorf("object %d changed on the round trip:\n got %#v\nwant %#v", i, decoded[i], want[i])
		}
	}
	if !strings.Contains(string(manifest), "ipAddresses:\n  - 127.0.0.1") {
		t.Errorf("manifest lacks the server IP:\n%s", manifest)
	}
}

func TestCertManagerResourcesValidate(t *testing.T) {
	if _, err := NewCertManagerResources(CertManagerConfig{Cluster: "Bad", ServerDNSNames: []string{"x"}}); err == nil {
		t.Error("bad cluster name accepted")
	}
	if _, err := NewCertManagerResources(CertManagerConfig{Cluster: "c1"}); err == nil {
		t.Error("no server names accepted")
	}
	r, err := NewCertManagerResources(CertManagerConfig{Cluster: "c1", ServerDNSNames: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.SelfSignedIssuer != nil || len(r.Objects()) != 4 {
		t.Errorf("without BootstrapCA: %d objects", len(r.Objects()))
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
