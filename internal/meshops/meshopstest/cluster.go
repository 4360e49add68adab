package meshopstest

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// StartForCluster runs the mesh etcd of a cluster that `isthmus enable`
// prepared, the way its mesh apiserver would: with the CA and server
// certificate from the cluster's Secrets, its cluster-config from
// isthmus-config, and its endpoint published in isthmus-config (the
// apiserver's --advertise-endpoint).
func StartForCluster(t testing.TB, client kubernetes.Interface) *MeshEtcd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	secrets := client.CoreV1().Secrets(meshconfig.Namespace)
	caSecret, err := secrets.Get(ctx, meshconfig.CASecret, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the cluster is not enabled: %v", err)
	}
	ca, err := certs.LoadCA(caSecret.Data[meshconfig.KeyTLSCert], caSecret.Data[meshconfig.KeyTLSKey])
	if err != nil {
		t.Fatal(err)
	}
	srv, err := secrets.Get(ctx, meshconfig.ServerCertSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	server := &certs.KeyPair{CertPEM: srv.Data[meshconfig.KeyTLSCert], KeyPEM: srv.Data[meshconfig.KeyTLSKey]}
	cm, err := client.CoreV1().ConfigMaps(meshconfig.Namespace).Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	name := cm.Data[meshconfig.KeyClusterName]
	id, err := strconv.ParseUint(cm.Data[meshconfig.KeyClusterID], 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	maxConnected, err := strconv.ParseUint(cm.Data[meshconfig.KeyMaxConnectedClusters], 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	e := StartMeshEtcd(t, name, ca, server, protocol.NewClusterConfig(uint32(id), uint32(maxConnected)))
	PublishEndpoints(t, client, e.Endpoint)
	return e
}

// PublishEndpoints sets the mesh endpoints in the cluster's isthmus-config,
// as the mesh apiserver's --advertise-endpoint does.
func PublishEndpoints(t testing.TB, client kubernetes.Interface, endpoints ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cms := client.CoreV1().ConfigMaps(meshconfig.Namespace)
	cm, err := cms.Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data[meshconfig.KeyMeshEndpoints] = strings.Join(endpoints, ",")
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// SyncReaders makes the remote-<r> users match the cluster's remote-readers
// ConfigMap, as the mesh apiserver does.
func (e *MeshEtcd) SyncReaders(t testing.TB, client kubernetes.Interface) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var readers []string
	cm, err := client.CoreV1().ConfigMaps(meshconfig.Namespace).Get(ctx, meshconfig.RemoteReadersConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		t.Fatal(err)
	default:
		for r := range cm.Data {
			readers = append(readers, r)
		}
	}
	e.SetReaders(t, readers)
}
