package charttest

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// valueCases are the values the chart is rendered, applied and run with:
// the defaults and the values a user most plausibly changes.
var valueCases = []struct {
	name   string
	values values
}{
	{"defaults", values{}},
	{"loadbalancer-emptydir-identity-in-values", values{
		"cluster":   map[string]any{"name": "east", "id": 300, "maxConnectedClusters": 511},
		"image":     map[string]any{"repository": "registry.example.com/isthmus", "tag": "v0.1.0", "pullPolicy": "Always", "pullSecrets": []string{"regcred"}},
		"logLevel":  "debug",
		"logFormat": "json",
		"apiserver": map[string]any{
			"advertiseEndpoints": []string{"https://203.0.113.10:2379", "https://mesh.east.example.com:2379"},
			"remoteClusters":     []string{"west"},
			"persistence":        map[string]any{"enabled": false, "emptyDirSizeLimit": "2Gi"},
			"service": map[string]any{
				"type": "LoadBalancer", "loadBalancerIP": "203.0.113.10", "loadBalancerSourceRanges": []string{"198.51.100.0/24"},
				"externalTrafficPolicy": "Local", "annotations": map[string]string{"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
			},
			"nodeSelector": map[string]string{"node-role.kubernetes.io/control-plane": ""},
			"tolerations":  []map[string]string{{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}},
			"extraArgs":    []string{"--identity-grace-period=30m"},
		},
		"agent": map[string]any{
			"encryption":        "disabled",
			"socketLB":          map[string]any{"enabled": false},
			"restrictToOwnNode": false,
			"metricsPort":       19966,
			"extraArgs":         []string{"--ipcache-max-entries=1048576"},
			"resources":         map[string]any{"requests": map[string]string{"cpu": "200m"}},
		},
	}},
	{"cert-manager-clusterip", values{
		"cluster":   map[string]any{"name": "west", "id": 2},
		"apiserver": map[string]any{"service": map[string]any{"type": "ClusterIP"}, "persistence": map[string]any{"storageClass": "fast", "size": "5Gi"}},
		"agent": map[string]any{
			"wireguard": map[string]any{"mode": "kernel", "port": 51999, "device": "wg-mesh"},
			"hostPaths": map[string]any{"cgroup": "/sys/fs/cgroup/unified"},
		},
		"certManager": map[string]any{
			"enabled": true, "bootstrapCA": true, "duration": "2160h", "renewBefore": "360h",
			"extraServerNames": []string{"mesh.west.example.com", "192.0.2.7"},
		},
	}},
}

func TestChartLints(t *testing.T) {
	for _, tc := range valueCases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := runHelm(t, "lint", "--strict", chartDir(t), "--namespace", meshconfig.Namespace,
				"--kube-version", kubeVersion, "--values", valuesFile(t, tc.values)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestChartAppliesToKubeAPIServer applies every rendered object of every
// value case to a real kube-apiserver (dry run, strict field validation).
func TestChartAppliesToKubeAPIServer(t *testing.T) {
	c := newCluster(t)
	c.installCertManagerCRDs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, tc := range valueCases {
		t.Run(tc.name, func(t *testing.T) {
			for _, o := range render(t, tc.values) {
				if err := c.apply(ctx, o, true); err != nil {
					t.Error(err)
				}
			}
		})
	}
}

// TestApplyRefusesSchemaErrors shows the apply above can fail: the
// rendered Deployment with a misspelt field, or a value of the wrong type,
// is refused.
func TestApplyRefusesSchemaErrors(t *testing.T) {
	c := newCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for name, breakIt := range map[string]func(o *unstructured.Unstructured) error{
		"unknown field": func(o *unstructured.Unstructured) error {
			return unstructured.SetNestedField(o.Object, int64(2), "spec", "replica")
		},
		"wrong type": func(o *unstructured.Unstructured) error {
			return unstructured.SetNestedField(o.Object, "one", "spec", "replicas")
		},
	} {
		t.Run(name, func(t *testing.T) {
			o := mustFind(t, render(t, values{}), "Deployment", "isthmus-apiserver")
			if err := breakIt(o); err != nil {
				t.Fatal(err)
			}
			if err := c.apply(ctx, o, true); err == nil {
				t.Fatal("a Deployment with a schema error was accepted")
			}
		})
	}
}

// TestChartRefusesBadValues: values a user could get wrong fail the render
// with a message naming the value.
func TestChartRefusesBadValues(t *testing.T) {
	for _, tc := range []struct {
		name      string
		namespace string
		values    values
		want      string
	}{
		{"other namespace", "kube-system", values{}, "install Isthmus into the namespace isthmus-system"},
		{"bad cluster name", meshconfig.Namespace, values{"cluster": map[string]any{"name": "East_1"}}, "/cluster/name"},
		{"cluster ID too large", meshconfig.Namespace, values{"cluster": map[string]any{"id": 600}}, "/cluster/id"},
		{"misspelt value", meshconfig.Namespace, values{"apiserver": map[string]any{"servce": map[string]any{}}}, "servce"},
		{"service type", meshconfig.Namespace, values{"apiserver": map[string]any{"service": map[string]any{"type": "External"}}}, "/apiserver/service/type"},
		{"http endpoint", meshconfig.Namespace, values{"apiserver": map[string]any{"advertiseEndpoints": []string{"http://10.0.0.1:2379"}}}, "/apiserver/advertiseEndpoints/0"},
		{"cert-manager without a cluster name", meshconfig.Namespace, values{"certManager": map[string]any{"enabled": true}}, "certManager.enabled needs cluster.name"},
		{"name without ID", meshconfig.Namespace, values{"cluster": map[string]any{"name": "east"}}, "set cluster.name and cluster.id together"},
		{"device name too long", meshconfig.Namespace, values{"agent": map[string]any{"wireguard": map[string]any{"device": "isthmus-wireguard0"}}}, "/agent/wireguard/device"},
		{"renewal after expiry", meshconfig.Namespace, values{"cluster": map[string]any{"name": "a", "id": 1}, "certManager": map[string]any{"enabled": true, "duration": "24h", "renewBefore": "48h"}}, "must be shorter than certManager.duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tryRender(t, tc.namespace, tc.values)
			if err == nil {
				t.Fatal("rendered; want an error")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error does not say %q:\n%v", tc.want, err)
			}
		})
	}
}

func toTyped[T any](t *testing.T, o *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, out, true); err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return out
}

// TestChartShape checks what the rest of the project relies on: the names
// and labels the e2e suite and the CLI find things by, one apiserver
// replaced by Recreate, the agent's host mounts, and that values reach the
// objects.
func TestChartShape(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		objs := render(t, values{})
		dep := toTyped[appsv1.Deployment](t, mustFind(t, objs, "Deployment", "isthmus-apiserver"))
		if *dep.Spec.Replicas != 1 || dep.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Errorf("apiserver: replicas %d, strategy %s; want 1 and Recreate (one writer)", *dep.Spec.Replicas, dep.Spec.Strategy.Type)
		}
		if got := dep.Spec.Template.Labels["app.kubernetes.io/name"]; got != "isthmus-apiserver" {
			t.Errorf("apiserver pods labelled app.kubernetes.io/name=%q; the e2e suite selects isthmus-apiserver", got)
		}
		ds := toTyped[appsv1.DaemonSet](t, mustFind(t, objs, "DaemonSet", "isthmus-agent"))
		pod := ds.Spec.Template.Spec
		if got := ds.Spec.Template.Labels["app.kubernetes.io/name"]; got != "isthmus-agent" {
			t.Errorf("agent pods labelled app.kubernetes.io/name=%q; the e2e suite selects isthmus-agent", got)
		}
		if len(pod.Containers) != 1 || pod.Containers[0].Name != "isthmus-agent" {
			t.Errorf("agent containers %v; the e2e suite execs into container isthmus-agent", pod.Containers)
		}
		if !pod.HostNetwork || pod.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
			t.Errorf("agent: hostNetwork %t, dnsPolicy %s", pod.HostNetwork, pod.DNSPolicy)
		}
		ctr := pod.Containers[0]
		if sc := ctr.SecurityContext; sc == nil || sc.Privileged == nil || !*sc.Privileged {
			t.Error("agent container not privileged; Bidirectional mount propagation needs it")
		}
		mounts := map[string]corev1.VolumeMount{}
		for _, m := range ctr.VolumeMounts {
			mounts[m.MountPath] = m
		}
		if m, ok := mounts["/sys/fs/bpf"]; !ok || m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional {
			t.Errorf("agent: /sys/fs/bpf mount %+v; want Bidirectional propagation", m)
		}
		if m, ok := mounts["/run/isthmus/cgroupv2"]; !ok || !slices.Contains(ctr.Args, "--socklb-cgroup=/run/isthmus/cgroupv2") {
			t.Errorf("agent: the socket LB is not attached to the host's cgroup root (mount %+v, args %q)", m, ctr.Args)
		}
		if !slices.Contains(ctr.Args, "--encryption=wireguard") || !slices.ContainsFunc(ctr.Ports, func(p corev1.ContainerPort) bool {
			return p.Protocol == corev1.ProtocolUDP && p.ContainerPort == 51871
		}) {
			t.Errorf("agent: WireGuard not on by default on UDP 51871 (args %q, ports %v)", ctr.Args, ctr.Ports)
		}
		if !slices.ContainsFunc(ctr.Env, func(e corev1.EnvVar) bool {
			return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
		}) {
			t.Error("agent: no NODE_NAME from spec.nodeName")
		}
		remote := toTyped[corev1.Service](t, mustFind(t, objs, "Service", "isthmus-apiserver-remote"))
		if remote.Spec.Type != corev1.ServiceTypeNodePort || remote.Spec.Ports[0].NodePort != 32379 || remote.Spec.Ports[0].Port != 2379 {
			t.Errorf("remote Service %s port %d nodePort %d; want NodePort 2379 on node port 32379", remote.Spec.Type, remote.Spec.Ports[0].Port, remote.Spec.Ports[0].NodePort)
		}
		in := toTyped[corev1.Service](t, mustFind(t, objs, "Service", meshconfig.APIServerService))
		if in.Spec.Type != corev1.ServiceTypeClusterIP {
			t.Errorf("in-cluster Service type %s", in.Spec.Type)
		}
		mustFind(t, objs, "PersistentVolumeClaim", "isthmus-apiserver-etcd")
		mustFind(t, objs, "ValidatingAdmissionPolicy", "isthmus-agent-own-node")
		mustFind(t, objs, "ValidatingAdmissionPolicyBinding", "isthmus-agent-own-node")
		for _, crd := range []string{"meshagents.isthmus.dev", "meshnetworkpolicies.isthmus.dev"} {
			mustFind(t, objs, "CustomResourceDefinition", crd)
		}
		if o := find(objs, "Certificate", "isthmus-apiserver-server"); o != nil {
			t.Error("cert-manager Certificates rendered though certManager.enabled is false")
		}
		for _, o := range objs {
			if o.GetKind() == "CustomResourceDefinition" || o.GetKind() == "ClusterRole" || o.GetKind() == "ClusterRoleBinding" || strings.HasPrefix(o.GetKind(), "ValidatingAdmissionPolicy") {
				continue
			}
			if o.GetNamespace() != meshconfig.Namespace {
				t.Errorf("%s %s in namespace %q; want %s", o.GetKind(), o.GetName(), o.GetNamespace(), meshconfig.Namespace)
			}
		}
	})
	t.Run("values reach the objects", func(t *testing.T) {
		objs := render(t, valueCases[1].values)
		if o := find(objs, "PersistentVolumeClaim", "isthmus-apiserver-etcd"); o != nil {
			t.Error("PVC rendered with persistence disabled")
		}
		if o := find(objs, "ValidatingAdmissionPolicy", "isthmus-agent-own-node"); o != nil {
			t.Error("admission policy rendered with agent.restrictToOwnNode false")
		}
		dep := toTyped[appsv1.Deployment](t, mustFind(t, objs, "Deployment", "isthmus-apiserver"))
		ctr := dep.Spec.Template.Spec.Containers[0]
		for _, want := range []string{"--advertise-endpoint=https://203.0.113.10:2379", "--advertise-endpoint=https://mesh.east.example.com:2379",
			"--remote-cluster=west", "--log-level=debug", "--log-format=json", "--identity-grace-period=30m"} {
			if !slices.Contains(ctr.Args, want) {
				t.Errorf("apiserver args %q lack %s", ctr.Args, want)
			}
		}
		if ctr.Image != "registry.example.com/isthmus:v0.1.0" || ctr.ImagePullPolicy != corev1.PullAlways {
			t.Errorf("image %s pull %s", ctr.Image, ctr.ImagePullPolicy)
		}
		env := map[string]corev1.EnvVar{}
		for _, e := range ctr.Env {
			env[e.Name] = e
		}
		if env["ISTHMUS_CLUSTER_NAME"].Value != "east" || env["ISTHMUS_CLUSTER_ID"].Value != "300" || env["ISTHMUS_MAX_CONNECTED_CLUSTERS"].Value != "511" {
			t.Errorf("cluster identity env %v; want the values", ctr.Env)
		}
		vol := dep.Spec.Template.Spec.Volumes[0]
		if vol.EmptyDir == nil || vol.EmptyDir.SizeLimit == nil || vol.EmptyDir.SizeLimit.String() != "2Gi" {
			t.Errorf("etcd volume %+v; want an emptyDir of 2Gi", vol)
		}
		remote := toTyped[corev1.Service](t, mustFind(t, objs, "Service", "isthmus-apiserver-remote"))
		if remote.Spec.Type != corev1.ServiceTypeLoadBalancer || remote.Spec.LoadBalancerIP != "203.0.113.10" ||
			remote.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal || remote.Annotations["service.beta.kubernetes.io/aws-load-balancer-type"] != "nlb" {
			t.Errorf("remote Service %+v", remote.Spec)
		}
		ds := toTyped[appsv1.DaemonSet](t, mustFind(t, objs, "DaemonSet", "isthmus-agent"))
		agentArgs := ds.Spec.Template.Spec.Containers[0].Args
		for _, want := range []string{"--metrics-address=:19966", "--log-json=true", "--encryption=disabled", "--socklb-cgroup=-"} {
			if !slices.Contains(agentArgs, want) {
				t.Errorf("agent args %q lack %s", agentArgs, want)
			}
		}
		for _, v := range ds.Spec.Template.Spec.Volumes {
			if v.Name == "wireguard" || v.Name == "cgroup" {
				t.Errorf("agent mounts %s though WireGuard and the socket LB are off", v.HostPath.Path)
			}
		}
	})
}
