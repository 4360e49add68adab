package meshconfig

import (
	"strings"
	"testing"
)

func TestParseServiceAnnotations(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   map[string]string
		want ServiceOptions
		errs []string
	}{
		{"none", nil, ServiceOptions{Shared: true, Affinity: AffinityNone}, nil},
		{"isthmus", map[string]string{ServiceGlobalAnnotation: "true", ServiceSharedAnnotation: "false", ServiceAffinityAnnotation: "local"},
			ServiceOptions{Global: true, Shared: false, Affinity: AffinityLocal}, nil},
		{"cilium", map[string]string{CiliumServiceGlobalAnnotation: "True", CiliumServiceAffinityAnnotation: "remote"},
			ServiceOptions{Global: true, Shared: true, Affinity: AffinityRemote}, nil},
		{"isthmus wins", map[string]string{ServiceGlobalAnnotation: "false", CiliumServiceGlobalAnnotation: "true", ServiceAffinityAnnotation: "none", CiliumServiceAffinityAnnotation: "local"},
			ServiceOptions{Global: false, Shared: true, Affinity: AffinityNone}, nil},
		{"bad values", map[string]string{ServiceGlobalAnnotation: "yes", ServiceSharedAnnotation: "true", CiliumServiceAffinityAnnotation: "nearest"},
			ServiceOptions{Global: false, Shared: true, Affinity: AffinityNone},
			[]string{`service.isthmus.dev/global="yes"`, `service.cilium.io/affinity="nearest"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := ParseServiceAnnotations(tc.in)
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
			if len(errs) != len(tc.errs) {
				t.Fatalf("errs %v, want %d", errs, len(tc.errs))
			}
			for i, e := range errs {
				if !strings.Contains(e.Error(), tc.errs[i]) {
					t.Errorf("error %q does not name %s", e, tc.errs[i])
				}
			}
		})
	}
}

func FuzzParseServiceAnnotations(f *testing.F) {
	f.Add("true", "false", "local")
	f.Add("TRUE ", "", "Remote")
	f.Fuzz(func(t *testing.T, global, shared, affinity string) {
		opts, errs := ParseServiceAnnotations(map[string]string{CiliumServiceGlobalAnnotation: global, ServiceSharedAnnotation: shared, ServiceAffinityAnnotation: affinity})
		switch opts.Affinity {
		case AffinityNone, AffinityLocal, AffinityRemote:
		default:
			t.Fatalf("affinity %q", opts.Affinity)
		}
		if len(errs) > 3 {
			t.Fatalf("%d errors for 3 annotations", len(errs))
		}
	})
}

// FuzzParseEntries feeds arbitrary clustermesh Secret data to the entry
// codec: it must not panic, every entry it accepts must have a valid name,
// endpoints and all three files, and must survive PutEntry/ParseEntries.
func FuzzParseEntries(f *testing.F) {
	f.Add("c1", []byte("endpoints:\n- https://10.0.0.1:2379\ntrusted-ca-file: /x/c1.etcd-client-ca.crt\ncert-file: /x/c1.etcd-client.crt\nkey-file: /x/c1.etcd-client.key\n"), []byte("ca"), []byte("cert"), []byte("key"))
	f.Add("c2", []byte("endpoints: {"), []byte(""), []byte("x"), []byte("y"))
	f.Add("c3", []byte("endpoints: [a]\ntrusted-ca-file: ../../etc/passwd\ncert-file: c\nkey-file: k\nextra: 1\n"), []byte("a"), []byte("b"), []byte("c"))
	f.Fuzz(func(t *testing.T, name string, config, ca, cert, key []byte) {
		data := map[string][]byte{
			name:                  config,
			name + suffixCA:       ca,
			name + suffixCert:     cert,
			name + suffixKey:      key,
			"passwd":              []byte("not a file of any entry"),
			"c":                   cert,
			"k":                   key,
			"other.etcd-client.x": key,
		}
		entries, _ := ParseEntries(data)
		for n, e := range entries {
			if n != e.Cluster || len(e.Endpoints) == 0 || len(e.CA) == 0 || len(e.Cert) == 0 || len(e.Key) == 0 {
				t.Fatalf("accepted unusable entry %q: %+v", n, e)
			}
			out := map[string][]byte{}
			if err := PutEntry(out, e); err != nil {
				t.Fatalf("accepted entry %q cannot be written back: %v", n, err)
			}
			back, errs := ParseEntries(out)
			if len(errs) != 0 || !back[n].Equal(e) {
				t.Fatalf("entry %q changed on round trip: %v", n, errs)
			}
		}
	})
}
