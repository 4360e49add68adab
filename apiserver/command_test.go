package apiserver

import (
	"context"
	"strings"
	"testing"
)

func TestCommandRejectsBadClusterFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster-id", "3"}, "--cluster-name: invalid cluster: cluster name is empty"},
		{[]string{"--cluster-name", "Cluster_3", "--cluster-id", "3"}, `cluster name "Cluster_3" must consist of lower-case letters`},
		{[]string{"--cluster-name", strings.Repeat("a", 33), "--cluster-id", "3"}, "at most 32 are allowed"},
		{[]string{"--cluster-name", "c3"}, "--cluster-id: invalid cluster: cluster ID 0 is out of range"},
		{[]string{"--cluster-name", "c3", "--cluster-id", "256"}, "between 1 and 255"},
		{[]string{"--cluster-name", "c3", "--cluster-id", "300", "--max-connected-clusters", "300"}, "maxConnectedClusters is 300; it must be 255 or 511"},
		{[]string{"--cluster-name", "c3", "--cluster-id", "3", "--log-level", "loud"}, `--log-level "loud"`},
	} {
		cmd := NewCommand()
		cmd.SetArgs(tc.args)
		err := cmd.ExecuteContext(context.Background())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := func() Config {
		return Config{
			ClusterName: "c1", ClusterID: 1, MaxConnectedClusters: 255,
			Kube:    nil,
			DataDir: "/tmp/x", ListenAddress: "127.0.0.1:0",
			ServerCertFile: "s.crt", ServerKeyFile: "s.key", ClientCAFile: "ca.crt",
			AdminCertFile: "a.crt", AdminKeyFile: "a.key",
		}
	}
	c := good()
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "no Kubernetes client config") {
		t.Fatalf("missing kube config: %v", err)
	}
	for _, tc := range []struct {
		mutate func(*Config)
		want   string
	}{
		{func(c *Config) { c.DataDir = "" }, "--data-dir is required"},
		{func(c *Config) { c.ListenAddress = "2379" }, "--listen-address"},
		{func(c *Config) { c.AdminCertFile = "" }, "--admin-cert-file is required"},
		{func(c *Config) { c.EtcdEndpoints = []string{"http://etcd:2379"} }, "is not an https URL"},
		{func(c *Config) { c.EtcdEndpoints = []string{"https://etcd:2379"} }, "--etcd-cert-file and --etcd-key-file are required"},
		{func(c *Config) { c.AdvertiseEndpoints = []string{"10.0.0.1:2379"} }, "--advertise-endpoint"},
		{func(c *Config) { c.RemoteClusters = []string{"Bad"} }, "--remote-cluster"},
	} {
		c := good()
		tc.mutate(&c)
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want %q", err, tc.want)
		}
	}
}
