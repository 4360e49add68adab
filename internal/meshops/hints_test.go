package meshops

import (
	"strings"
	"testing"
)

func TestHintFor(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{"tls: failed to verify certificate: x509: certificate signed by unknown authority", "re-run `isthmus connect --context ctx --destination-context <context of b>`"},
		{`duplicate cluster ID: cluster "b" announces cluster ID 1`, "another --cluster-id"},
		{`cluster "b" runs with maxConnectedClusters 511 but this agent with 255`, "same --max-connected-clusters"},
		{"x509: certificate has expired or is not yet valid", "renew"[:0] + "outside its validity"},
		{"x509: certificate is valid for isthmus-apiserver, not 10.0.0.9", "--server-san"},
		{"etcdserver: permission denied", `"a" is in ConfigMap isthmus-system/isthmus-remote-readers on b`},
		{"etcdserver: user name not found", "remote-a"},
		{"cilium/cluster-config/b is missing: the cluster's mesh apiserver has not published", "has not published its cluster config"},
		{"dial tcp: lookup mesh.b.example: no such host", "does not resolve"},
		{"no heartbeat for 2m0s, more than twice its interval", "stopped writing its heartbeat"},
		{"dial tcp 10.0.0.2:2379: connect: connection refused", "cannot reach the mesh endpoint of b"},
		{"context deadline exceeded", "cannot reach"},
		{`clustermesh entry "b": client certificate and key: tls: private key does not match public key; re-run ` + "`isthmus connect`", "re-run `isthmus connect"},
	} {
		got := HintFor(tc.msg, "ctx", "a", "b")
		if !strings.Contains(got, tc.want) {
			t.Errorf("HintFor(%q) = %q, want %q in it", tc.msg, got, tc.want)
		}
	}
	if got := HintFor("something new", "ctx", "a", "b"); got != "" {
		t.Errorf("unknown error got hint %q", got)
	}
}
