package meshops

import (
	"slices"
	"strings"
	"testing"
)

func TestParseMeshConfig(t *testing.T) {
	got, err := ParseMeshConfig(map[string]string{
		"cluster-name": "east", "cluster-id": "300", "max-connected-clusters": "511",
		"mesh-endpoints": "https://10.0.0.1:2379, https://mesh.example:443,",
	})
	want := MeshConfig{ClusterName: "east", ClusterID: 300, MaxConnectedClusters: 511, MeshEndpoints: []string{"https://10.0.0.1:2379", "https://mesh.example:443"}}
	if err != nil || got.ClusterName != want.ClusterName || got.ClusterID != want.ClusterID || got.MaxConnectedClusters != want.MaxConnectedClusters || !slices.Equal(got.MeshEndpoints, want.MeshEndpoints) {
		t.Errorf("ParseMeshConfig = %+v, %v; want %+v", got, err, want)
	}
	if got, err := ParseMeshConfig(map[string]string{"cluster-name": "a", "cluster-id": "7"}); err != nil || got.MaxConnectedClusters != 255 {
		t.Errorf("without max-connected-clusters: %+v, %v", got, err)
	}
	for _, tc := range []struct {
		data map[string]string
		want []string
	}{
		{map[string]string{"cluster-name": "a", "cluster-id": "300"}, []string{"cluster-id", "between 1 and 255"}},
		{map[string]string{"cluster-name": "A", "cluster-id": "x", "max-connected-clusters": "12"}, []string{"cluster-name", `"x" is not a number`, "maxConnectedClusters is 12"}},
		{map[string]string{"cluster-name": "a", "cluster-id": "1", "mesh-endpoints": "http://x:1"}, []string{"mesh-endpoints", "not an https URL"}},
	} {
		_, err := ParseMeshConfig(tc.data)
		for _, w := range tc.want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("ParseMeshConfig(%v) = %v, want %q in it", tc.data, err, w)
			}
		}
	}
}

func TestValidateMeshEndpoint(t *testing.T) {
	for ep, ok := range map[string]bool{
		"https://10.0.0.1:2379":    true,
		"https://[fd00::1]:2379":   true,
		"https://mesh.example.com": true,
		"https://mesh.example/":    true,
		"http://10.0.0.1:2379":     false,
		"10.0.0.1:2379":            false,
		"https://:2379":            false,
		"https://x:0":              false,
		"https://x:99999":          false,
		"https://x:2379/path":      false,
		"https://u@x:2379":         false,
	} {
		if err := ValidateMeshEndpoint(ep); (err == nil) != ok {
			t.Errorf("ValidateMeshEndpoint(%q) = %v, want ok=%v", ep, err, ok)
		}
	}
}
