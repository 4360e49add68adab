package apiserver_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// The benchmarks run the real apiserver against the real kube-apiserver of
// the test env, loaded with a cluster of the size.
const (
	benchPods     = 10000
	benchNodes    = 100
	benchServices = 1000
	benchApps     = 200 // distinct label sets, hence identities
)

// loadCluster creates benchNodes Nodes, benchPods Running pods spread over
// them and benchApps label sets, and benchServices global Services with one
// EndpointSlice of 10 ready endpoints each, in namespace ns.
func loadCluster(b *testing.B, cfg *rest.Config, ns string) {
	b.Helper()
	fast := rest.CopyConfig(cfg)
	fast.QPS, fast.Burst = -1, 0 // the loader is not what is measured
	client, err := kubernetes.NewForConfig(fast)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	start := time.Now()
	parallel(b, benchNodes, func(i int) error {
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s-n%03d", ns, i), Labels: map[string]string{"kubernetes.io/hostname": fmt.Sprintf("n%03d", i)}},
			Spec:       corev1.NodeSpec{PodCIDRs: []string{fmt.Sprintf("10.%d.%d.0/24", 100+i/256, i%256)}},
		}
		n, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("172.20.%d.%d", i/256, i%256+1)}}
		_, err = client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	parallel(b, benchPods, func(i int) error {
		node := i % benchNodes
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%05d", i), Namespace: ns, Labels: map[string]string{
				"app": fmt.Sprintf("app%03d", i%benchApps), "pod-template-hash": fmt.Sprint(i),
			}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("%s-n%03d", ns, node), Containers: []corev1.Container{{Name: "c", Image: "registry.invalid/echo"}}},
		}
		p, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		ip := fmt.Sprintf("10.%d.%d.%d", 100+node/256, node%256, i/benchNodes+1)
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		_, err = client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
	parallel(b, benchServices, func(i int) error {
		s := &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("s%04d", i), Namespace: ns, Annotations: map[string]string{meshconfig.ServiceGlobalAnnotation: "true"}},
			Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}
		if _, err := client.CoreV1().Services(ns).Create(ctx, s, metav1.CreateOptions{}); err != nil {
			return err
		}
		sl := &discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Name: s.Name, Namespace: ns, Labels: map[string]string{discoveryv1.LabelServiceName: s.Name}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080))}},
		}
		for j := range 10 {
			sl.Endpoints = append(sl.Endpoints, discoveryv1.Endpoint{Addresses: []string{fmt.Sprintf("10.%d.%d.%d", 100+(i*10+j)%benchNodes/256, (i*10+j)%benchNodes, (i*10+j)/benchNodes%250+1)}})
		}
		_, err := client.DiscoveryV1().EndpointSlices(ns).Create(ctx, sl, metav1.CreateOptions{})
		return err
	})
	b.Logf("loaded %d nodes, %d pods, %d services in %v", benchNodes, benchPods, benchServices, time.Since(start).Round(time.Second))
	b.Cleanup(func() {
		parallel(b, benchNodes, func(i int) error {
			return client.CoreV1().Nodes().Delete(context.Background(), fmt.Sprintf("%s-n%03d", ns, i), metav1.DeleteOptions{})
		})
		zero := int64(0)
		parallel(b, benchPods, func(i int) error {
			return client.CoreV1().Pods(ns).Delete(context.Background(), fmt.Sprintf("p%05d", i), metav1.DeleteOptions{GracePeriodSeconds: &zero})
		})
		parallel(b, benchServices, func(i int) error {
			name := fmt.Sprintf("s%04d", i)
			if err := client.DiscoveryV1().EndpointSlices(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
				return err
			}
			return client.CoreV1().Services(ns).Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	})
}

func ptr[T any](v T) *T { return &v }

// parallel runs fn(0..n-1) on 32 goroutines and fails b on the first error.
func parallel(b *testing.B, n int, fn func(i int) error) {
	b.Helper()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
		next  = make(chan int)
	)
	for range 32 {
		wg.Go(func() {
			for i := range next {
				if err := fn(i); err != nil {
					once.Do(func() { first = err })
				}
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	if first != nil {
		b.Fatal(first)
	}
}

// BenchmarkExport loads the cluster once for its sub-benchmarks.
func BenchmarkExport(b *testing.B) {
	k := kube.Kube(b)
	loadCluster(b, k.Config, k.Namespace)
	b.Cleanup(func() { deleteMeshConfigMap(b, k.Client) })
	b.Run("initial", func(b *testing.B) { benchInitialExport(b, k.Config) })
	b.Run("burst", func(b *testing.B) { benchExportBurst(b, k.Config, k.Client, k.Namespace) })
}

// benchInitialExport measures a fresh apiserver's start on the loaded
// cluster, to ready: etcd start, informer lists of 10k pods and 1k
// services, conversion, identity allocation, batched writes, and the synced
// canaries.
func benchInitialExport(b *testing.B, cfg *rest.Config) {
	var (
		total time.Duration
		heap  float64
	)
	for range b.N {
		b.StopTimer()
		m := newMeshServer(b, cfg, serverOptions{})
		var before runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		b.StartTimer()
		start := time.Now()
		m.start()
		total += time.Since(start)
		b.StopTimer()
		keys, err := m.list(context.Background(), protocol.IPCachePrefix, protocol.ServicesPrefix)
		if err != nil {
			b.Fatal(err)
		}
		if want := benchPods + benchServices; len(keys) != want {
			b.Fatalf("exported %d ipcache and service keys, want %d", len(keys), want)
		}
		var after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = max(heap, float64(after.HeapInuse-min(after.HeapInuse, before.HeapInuse))/(1<<20))
		m.shutdown()
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s-to-ready")
	b.ReportMetric(heap, "MiB-heap-max")
}

// benchExportBurst measures steady-state export: one change to the
// namespace's labels gives each of its 10k pods a new identity, so 10k
// ipcache entries change at once; the clock runs from that API write to the
// last of them committed in etcd (watched). keyupdates/s counts those.
func benchExportBurst(b *testing.B, cfg *rest.Config, client kubernetes.Interface, namespace string) {
	m := newMeshServer(b, cfg, serverOptions{})
	m.start()
	ctx := context.Background()
	total := 0
	var elapsed time.Duration
	b.ResetTimer()
	for i := range b.N {
		wctx, stop := context.WithCancel(ctx)
		w := m.reader.Watch(wctx, protocol.IPCachePrefix, clientv3.WithPrefix())
		ns, err := client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if ns.Labels == nil {
			ns.Labels = map[string]string{}
		}
		// A value no earlier run used: an unchanged label is no event.
		ns.Labels["burst"] = fmt.Sprint(time.Now().UnixNano())
		start := time.Now()
		if _, err := client.CoreV1().Namespaces().Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		seen := map[string]bool{}
		for len(seen) < benchPods {
			select {
			case resp := <-w:
				for _, ev := range resp.Events {
					if ev.Type == clientv3.EventTypePut {
						seen[string(ev.Kv.Key)] = true
					}
				}
			case <-time.After(time.Minute):
				b.Fatalf("burst %d: %d of %d ipcache entries changed, then nothing for a minute", i, len(seen), benchPods)
			}
		}
		elapsed += time.Since(start)
		stop()
		total += len(seen)
	}
	b.ReportMetric(float64(total)/elapsed.Seconds(), "keyupdates/s")
}
