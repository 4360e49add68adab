package meshops

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// AgentLister lists the reports of a cluster's agents.
type AgentLister interface {
	ListAgents(ctx context.Context) ([]AgentReport, error)
}

// StatusOptions say how to read a cluster's status.
type StatusOptions struct {
	// Agents lists the agents' reports. Nil means the cluster's MeshAgent
	// objects.
	Agents AgentLister
	// StaleAfter is how old a report may be; zero means
	// DefaultStaleAfter.
	StaleAfter time.Duration
}

// Status reads what cluster c is configured to read (isthmus-config, the
// clustermesh Secret, the remote-readers grants) and what its agents
// report, and aggregates them.
func Status(ctx context.Context, c *Cluster, opts StatusOptions) (*StatusReport, error) {
	in, err := readStatusInput(ctx, c, opts)
	if err != nil {
		return nil, err
	}
	return Aggregate(in), nil
}

func readStatusInput(ctx context.Context, c *Cluster, opts StatusOptions) (StatusInput, error) {
	in := StatusInput{Context: c.context, Nodes: -1, StaleAfter: opts.StaleAfter}
	cm, err := c.getConfigMap(ctx, meshconfig.ConfigMapName)
	if err != nil {
		return in, err
	}
	if cm != nil {
		mc, err := ParseMeshConfig(cm.Data)
		if err != nil {
			in.ConfigError = fmt.Errorf("ConfigMap %s/%s is invalid: %w", meshconfig.Namespace, meshconfig.ConfigMapName, err)
		} else {
			in.Config = &mc
		}
	}
	mesh, err := c.getSecret(ctx, meshconfig.ClusterMeshSecret)
	if err != nil {
		return in, err
	}
	if mesh != nil {
		in.Entries, in.EntryErrors = meshconfig.ParseEntries(mesh.Data)
	}
	readers, err := c.getConfigMap(ctx, meshconfig.RemoteReadersConfigMap)
	if err != nil {
		return in, err
	}
	if readers != nil {
		in.Readers = slices.Sorted(maps.Keys(readers.Data))
	}
	if nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
		in.Nodes = len(nodes.Items)
	}
	lister := opts.Agents
	if lister == nil {
		lister = meshAgentLister{c}
	}
	if in.Agents, err = lister.ListAgents(ctx); err != nil {
		return in, err
	}
	in.Now = time.Now()
	return in, nil
}

// WaitOptions say how long and how to wait for a cluster to be ready.
type WaitOptions struct {
	StatusOptions
	// Timeout bounds the wait; zero means five minutes.
	Timeout time.Duration
	// Interval between polls; zero means two seconds.
	Interval time.Duration
	// Progress, when set, receives each report read while waiting, and
	// each error reading one (the wait goes on through those).
	Progress func(r *StatusReport, err error)
}

// NotReadyError is WaitReady's error when the cluster did not become
// ready in time: the reasons of the last report.
type NotReadyError struct {
	Context string
	Waited  time.Duration
	Reasons []string
}

func (e *NotReadyError) Error() string {
	if len(e.Reasons) == 0 {
		return fmt.Sprintf("context %q is not ready after %s", e.Context, e.Waited.Round(time.Second))
	}
	return fmt.Sprintf("context %q is not ready after %s:\n  - %s", e.Context, e.Waited.Round(time.Second), strings.Join(e.Reasons, "\n  - "))
}

// WaitReady polls Status until the report is Ready or opts.Timeout
// passes; then it returns the last report and a *NotReadyError.
func WaitReady(ctx context.Context, c *Cluster, opts WaitOptions) (*StatusReport, error) {
	timeout, interval := opts.Timeout, opts.Interval
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	if interval <= 0 {
		interval = 2 * time.Second
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var (
		last    *StatusReport
		lastErr error
	)
	for {
		r, err := Status(ctx, c, opts.StatusOptions)
		switch {
		case err == nil:
			last, lastErr = r, nil
			if opts.Progress != nil {
				opts.Progress(r, nil)
			}
			if r.Ready {
				return r, nil
			}
		case ctx.Err() == nil:
			lastErr = err
			if opts.Progress != nil {
				opts.Progress(nil, err)
			}
		}
		select {
		case <-ctx.Done():
			if parent := context.Cause(ctx); !errors.Is(parent, context.DeadlineExceeded) {
				return last, parent
			}
			nre := &NotReadyError{Context: c.context, Waited: time.Since(start)}
			if last != nil {
				nre.Reasons = last.NotReadyReasons()
			}
			if lastErr != nil {
				nre.Reasons = append(nre.Reasons, "last attempt to read the status: "+lastErr.Error())
			}
			return last, nre
		case <-ticker.C:
		}
	}
}
