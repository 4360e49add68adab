package charttest

import (
	"context"
	"encoding/json"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

// TestCertManagerObjectsMatchCerts: with certManager.enabled the chart
// renders the objects certs.NewCertManagerResources builds, and the server
// certificate is asked for exactly the names `isthmus enable` issues it
// for, given the same endpoints and extra names.
func TestCertManagerObjectsMatchCerts(t *testing.T) {
	c := newCluster(t)
	c.cleanMeshNamespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	endpoints := []string{"https://198.51.100.4:32379", "https://mesh.west.example.com:2379"}
	extra := []string{"mesh-alt.west.example.com", "192.0.2.7", "2001:db8::7"}
	objs := render(t, values{
		"cluster":   map[string]any{"name": "west", "id": 2},
		"apiserver": map[string]any{"advertiseEndpoints": endpoints},
		"certManager": map[string]any{
			"enabled": true, "bootstrapCA": true, "duration": "2160h", "extraServerNames": extra,
		},
	})

	// The names `isthmus enable` puts into the server certificate.
	mc, err := meshops.NewCluster("testenv", c.Config)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := meshops.Enable(ctx, mc, meshops.EnableOptions{ClusterName: "west", ClusterID: 2, MeshEndpoints: endpoints, ServerSANs: extra}); err != nil {
		t.Fatal(err)
	}
	sec, err := c.Client.CoreV1().Secrets(meshconfig.Namespace).Get(ctx, meshconfig.ServerCertSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	issued, err := certs.ParseCertificate(sec.Data[meshconfig.KeyTLSCert])
	if err != nil {
		t.Fatal(err)
	}
	var ips []netip.Addr
	for _, ip := range issued.IPAddresses {
		a, _ := netip.AddrFromSlice(ip)
		ips = append(ips, a.Unmap())
	}

	want, err := certs.NewCertManagerResources(certs.CertManagerConfig{
		Cluster:        "west",
		ServerDNSNames: issued.DNSNames,
		ServerIPs:      ips,
		Duration:       2160 * time.Hour,
		BootstrapCA:    true,
	})
	if err != nil {
		t.Fatal(err)
	}
	var rendered []*unstructured.Unstructured
	for _, o := range objs {
		if o.GroupVersionKind().Group == "cert-manager.io" {
			rendered = append(rendered, o)
		}
	}
	if len(rendered) != len(want.Objects()) {
		t.Errorf("the chart rendered %d cert-manager objects (%s); certs builds %d", len(rendered), inventory(rendered), len(want.Objects()))
	}
	for _, w := range want.Objects() {
		u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(w)
		if err != nil {
			t.Fatal(err)
		}
		wu := &unstructured.Unstructured{Object: u}
		got := find(rendered, wu.GetKind(), wu.GetName())
		if got == nil {
			t.Errorf("the chart renders no %s %s", wu.GetKind(), wu.GetName())
			continue
		}
		if got.GetNamespace() != wu.GetNamespace() || got.GetAPIVersion() != wu.GetAPIVersion() {
			t.Errorf("%s %s: %s in %s; want %s in %s", wu.GetKind(), wu.GetName(), got.GetAPIVersion(), got.GetNamespace(), wu.GetAPIVersion(), wu.GetNamespace())
		}
		gs, ws := normalizeSpec(t, got), normalizeSpec(t, wu)
		if !reflect.DeepEqual(gs, ws) {
			t.Errorf("%s %s spec differs from certs.NewCertManagerResources:\n chart: %v\n certs: %v", wu.GetKind(), wu.GetName(), gs, ws)
		}
	}
}

// normalizeSpec returns o's spec with durations as time.Duration and the
// server names sorted, which cert-manager reads the same whichever way
// they are written.
func normalizeSpec(t *testing.T, o *unstructured.Unstructured) map[string]any {
	t.Helper()
	// Through JSON, so that numbers have one type whoever decoded them.
	b, err := json.Marshal(o.Object["spec"])
	if err != nil {
		t.Fatal(err)
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"duration", "renewBefore"} {
		if s, ok := spec[k].(string); ok {
			d, err := time.ParseDuration(s)
			if err != nil {
				t.Fatalf("%s %s: %s %q: %v", o.GetKind(), o.GetName(), k, s, err)
			}
			spec[k] = d
		}
	}
	for _, k := range []string{"dnsNames", "ipAddresses"} {
		if l, ok := spec[k].([]any); ok {
			var s []string
			for _, v := range l {
				s = append(s, v.(string))
			}
			slices.Sort(s)
			spec[k] = s
		}
	}
	return spec
}
