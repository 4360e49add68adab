package meshconfig

import (
	"fmt"
	"strings"
	"testing"
)

func TestParseServiceAnnotations(t *testing.T) {
	const (
		g  = ServiceGlobalAnnotation
		s  = ServiceSharedAnnotation
		a  = ServiceAffinityAnnotation
		cg = CiliumServiceGlobalAnnotation
		cs = CiliumServiceSharedAnnotation
		ca = CiliumServiceAffinityAnnotation
	)
	for _, tc := range []struct {
		name     string
		ann      map[string]string
		want     ServiceOptions
		problems []string // the annotations reported, in order
	}{
		{"none", nil, ServiceOptions{Shared: true, Affinity: AffinityNone}, nil},
		{"global shares by default", map[string]string{g: "true"}, ServiceOptions{Global: true, Shared: true, Affinity: AffinityNone}, nil},
		{"isthmus spelling", map[string]string{g: "true", s: "false", a: "local"}, ServiceOptions{Global: true, Shared: false, Affinity: AffinityLocal}, nil},
		{"cilium spelling, any case", map[string]string{cg: "True", ca: " Remote"}, ServiceOptions{Global: true, Shared: true, Affinity: AffinityRemote}, nil},
		{"isthmus spelling wins", map[string]string{g: "false", cg: "true", s: "true", cs: "false", a: "remote", ca: "local"}, ServiceOptions{Shared: true, Affinity: AffinityRemote}, nil},
		{"isthmus wins even when bad", map[string]string{g: "yes", cg: "true"}, ServiceOptions{Shared: true, Affinity: AffinityNone}, []string{g}},
		{"bad global", map[string]string{g: "1"}, ServiceOptions{Shared: true, Affinity: AffinityNone}, []string{g}},
		{"bad shared keeps the default", map[string]string{g: "true", s: "maybe"}, ServiceOptions{Global: true, Shared: true, Affinity: AffinityNone}, []string{s}},
		{"bad affinity", map[string]string{g: "true", ca: "nearest"}, ServiceOptions{Global: true, Shared: true, Affinity: AffinityNone}, []string{ca}},
		{"empty affinity is reported", map[string]string{g: "true", a: ""}, ServiceOptions{Global: true, Shared: true, Affinity: AffinityNone}, []string{a}},
		{"several bad values", map[string]string{g: "yes", s: "true", ca: "nearest"}, ServiceOptions{Shared: true, Affinity: AffinityNone}, []string{g, ca}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, problems := ParseServiceAnnotations(tc.ann)
			if got != tc.want {
				t.Errorf("options %+v, want %+v", got, tc.want)
			}
			if len(problems) != len(tc.problems) {
				t.Fatalf("problems %v, want on %v", problems, tc.problems)
			}
			for i, p := range problems {
				if p.Annotation != tc.problems[i] || !strings.Contains(p.Error(), fmt.Sprintf("%s=%q", p.Annotation, tc.ann[p.Annotation])) || !strings.Contains(p.Error(), "using "+p.Default) {
					t.Errorf("problem %q, want one on %s naming its value and the default", p, tc.problems[i])
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
