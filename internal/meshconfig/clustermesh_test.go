package meshconfig

import (
	"strings"
	"testing"
)

func TestEntryRoundTrip(t *testing.T) {
	data := map[string][]byte{}
	a := ClusterEntry{Cluster: "c1", Endpoints: []string{"https://10.0.0.1:2379"}, CA: []byte("ca1"), Cert: []byte("cert1"), Key: []byte("key1")}
	b := ClusterEntry{Cluster: "c2", Endpoints: []string{"https://10.0.0.2:2379", "https://10.0.0.3:2379"}, CA: []byte("ca2"), Cert: []byte("cert2"), Key: []byte("key2")}
	for _, e := range []ClusterEntry{a, b} {
		if err := PutEntry(data, e); err != nil {
			t.Fatal(err)
		}
	}
	if got := string(data["c1"]); !strings.Contains(got, "trusted-ca-file: /var/lib/isthmus/clustermesh/c1.etcd-client-ca.crt") {
		t.Errorf("c1 config:\n%s", got)
	}
	got, errs := ParseEntries(data)
	if len(errs) != 0 || len(got) != 2 || !got["c1"].Equal(a) || !got["c2"].Equal(b) {
		t.Fatalf("ParseEntries = %+v, %v", got, errs)
	}
	DeleteEntry(data, "c1")
	if got, _ := ParseEntries(data); len(got) != 1 || len(data) != 4 {
		t.Fatalf("after delete: %v, %d keys", got, len(data))
	}
}

func TestParseEntriesKeepsGoodOnes(t *testing.T) {
	data := map[string][]byte{}
	if err := PutEntry(data, ClusterEntry{Cluster: "good", Endpoints: []string{"https://x:2379"}, CA: []byte("a"), Cert: []byte("b"), Key: []byte("c")}); err != nil {
		t.Fatal(err)
	}
	data["nofiles"] = []byte("endpoints: [https://y:2379]\ntrusted-ca-file: /x/nofiles.etcd-client-ca.crt\ncert-file: /x/c\nkey-file: /x/k\n")
	data["Bad_Name"] = []byte("endpoints: [https://y:2379]\n")
	data["garbage"] = []byte("endpoints: {")
	got, errs := ParseEntries(data)
	if len(got) != 1 || got["good"].Cluster != "good" {
		t.Errorf("entries = %v", got)
	}
	if len(errs) != 3 {
		t.Fatalf("errs = %v, want 3", errs)
	}
	for _, want := range []string{`"Bad_Name"`, `"garbage"`, `"nofiles"`} {
		found := false
		for _, e := range errs {
			found = found || strings.Contains(e.Error(), want)
		}
		if !found {
			t.Errorf("no error names %s: %v", want, errs)
		}
	}
}
