package meshops

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// DefaultRequestTimeout bounds each Kubernetes API request of a Cluster
// whose rest.Config sets no timeout, so an unreachable cluster fails the
// operation instead of hanging it.
const DefaultRequestTimeout = 30 * time.Second

// fieldManager names this package's writes in managedFields.
const fieldManager = "isthmus"

// Labels put on every object the operations create.
var managedLabels = map[string]string{
	"app.kubernetes.io/part-of":    "isthmus",
	"app.kubernetes.io/managed-by": "isthmus-cli",
}

// Cluster is one Kubernetes cluster the operations act on. It is safe for
// concurrent use.
type Cluster struct {
	context string
	host    string
	config  *rest.Config
	client  kubernetes.Interface
	mesh    *meshclient.Clientset
}

// NewCluster returns the cluster cfg reaches. context names it in messages
// and in suggested commands: the kubeconfig context, or whatever name the
// caller's users know it by (a lab cluster's name).
func NewCluster(context string, cfg *rest.Config) (*Cluster, error) {
	if context == "" {
		return nil, errors.New("new cluster: the context name is empty")
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultRequestTimeout
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "isthmus"
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %q: create Kubernetes client: %w", context, err)
	}
	mesh, err := meshclient.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %q: create isthmus.dev client: %w", context, err)
	}
	return &Cluster{context: context, host: cfg.Host, config: cfg, client: client, mesh: mesh}, nil
}

// Context is the name the cluster was opened with.
func (c *Cluster) Context() string { return c.context }

// Client is the cluster's Kubernetes client.
func (c *Cluster) Client() kubernetes.Interface { return c.client }

// RESTConfig returns a copy of the cluster's client configuration.
func (c *Cluster) RESTConfig() *rest.Config { return rest.CopyConfig(c.config) }

func (c *Cluster) String() string { return fmt.Sprintf("context %q", c.context) }

// apiError turns a failed Kubernetes request into a message that names the
// cluster and, when the API could not be reached at all, says so.
func (c *Cluster) apiError(verb, what string, err error) error {
	var uerr *url.Error
	switch {
	case errors.As(err, &uerr), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s %s in context %q: cannot reach the Kubernetes API at %s: %w", verb, what, c.context, c.host, err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%s %s in context %q: %w; the operation needs a user that may manage Secrets and ConfigMaps in namespace %s and read Nodes", verb, what, c.context, err, meshconfig.Namespace)
	}
	return fmt.Errorf("%s %s in context %q: %w", verb, what, c.context, err)
}

// getSecret returns the Secret, or nil when it does not exist.
func (c *Cluster) getSecret(ctx context.Context, name string) (*corev1.Secret, error) {
	s, err := c.client.CoreV1().Secrets(meshconfig.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, c.apiError("read", "Secret "+meshconfig.Namespace+"/"+name, err)
	}
	return s, nil
}

// getConfigMap returns the ConfigMap, or nil when it does not exist.
func (c *Cluster) getConfigMap(ctx context.Context, name string) (*corev1.ConfigMap, error) {
	cm, err := c.client.CoreV1().ConfigMaps(meshconfig.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, c.apiError("read", "ConfigMap "+meshconfig.Namespace+"/"+name, err)
	}
	return cm, nil
}
