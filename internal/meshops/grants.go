package meshops

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// DefaultGrantTimeout bounds the wait until a granted reader is let in.
// A mesh apiserver acts on a grant within a second or so; this leaves room
// for one that is restarting or backing off.
const DefaultGrantTimeout = 30 * time.Second

// grantCheck is one direction whose grant Connect waits for: reader reads
// target with the certificate of entry.
type grantCheck struct {
	reader, target *clusterState
	entry          meshconfig.ClusterEntry
}

func (g grantCheck) user() string { return protocol.RemoteUserFor(g.reader.config.ClusterName) }

// GrantError is the error of a connect whose grants did not all take
// effect in time: the grants are written (harmless while unused), no
// clustermesh entry is.
type GrantError struct {
	Problems []error
}

func (e *GrantError) Error() string {
	var b strings.Builder
	for i, p := range e.Problems {
		if i > 0 {
			b.WriteString("\n")
		}
		b.WriteString(p.Error())
	}
	b.WriteString("\nNo clustermesh entry was written, so no agent uses a certificate that is refused; the grants were written and are harmless. Run connect again once the cause is fixed, or with --grant-timeout 0 to write the entries without waiting.")
	return b.String()
}

func (e *GrantError) Unwrap() []error { return e.Problems }

// waitGrants waits, concurrently and for at most timeout, until each
// target lets its reader read its cluster-config with the certificate of
// the entry, exactly what the reader's agents will present; endpointTimeout
// bounds each dial and request. It fails with a GrantError naming every
// grant that is not live.
func waitGrants(ctx context.Context, checks []grantCheck, timeout, endpointTimeout time.Duration, progress func(string, ...any)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var mu sync.Mutex // serialises progress, which need not be safe for concurrent use
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		progress(format, args...)
	}
	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, g := range checks {
		say("waiting until %s lets %s in as user %s", g.target.label(), g.reader.config.ClusterName, g.user())
		wg.Go(func() {
			start := time.Now()
			if errs[i] = waitGrant(ctx, g, timeout, endpointTimeout); errs[i] == nil {
				say("%s lets %s in (after %s)", g.target.label(), g.reader.config.ClusterName, time.Since(start).Round(time.Millisecond))
			}
		})
	}
	wg.Wait()
	var problems []error
	for _, err := range errs {
		if err != nil {
			problems = append(problems, err)
		}
	}
	if len(problems) > 0 {
		return &GrantError{Problems: problems}
	}
	return nil
}

// grantRetryMax caps the pause between two reads of a grant not live yet.
const grantRetryMax = time.Second

// waitGrant reads g's target at each of its endpoints, as g's reader, until
// one answers or ctx ends.
func waitGrant(ctx context.Context, g grantCheck, timeout, endpointTimeout time.Duration) error {
	kp := &certs.KeyPair{CertPEM: g.entry.Cert, KeyPEM: g.entry.Key}
	key := protocol.ClusterConfigKey(g.target.config.ClusterName)
	clients := make([]*clientv3.Client, len(g.entry.Endpoints))
	defer func() {
		for _, c := range clients {
			if c != nil {
				c.Close()
			}
		}
	}()
	last := make([]string, len(g.entry.Endpoints)) // the last answer of each endpoint
	pause := 50 * time.Millisecond
	for {
		for i, ep := range g.entry.Endpoints {
			if clients[i] == nil {
				c, err := dialMesh(ctx, g.target, ep, kp, endpointTimeout)
				if err != nil {
					if ctx.Err() == nil {
						last[i] = fmt.Sprintf("%s: %v", ep, err)
					}
					continue
				}
				// One client serves every attempt: etcd checks the
				// certificate's user at each request, not at the dial.
				clients[i] = c
			}
			rctx, cancel := context.WithTimeout(ctx, endpointTimeout)
			_, err := clients[i].Get(rctx, key)
			cancel()
			if err == nil {
				return nil
			}
			if ctx.Err() != nil {
				break // the wait is over; keep the answers before it
			}
			last[i] = fmt.Sprintf("%s: %v", ep, err)
			if !refused(err) {
				// Not an answer about the user: dial again next time.
				clients[i].Close()
				clients[i] = nil
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.DeadlineExceeded) {
				return grantNotLive(g, timeout, last)
			}
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, grantRetryMax)
	}
}

// grantNotLive says what to check when g's target did not let its reader
// in; last are the endpoints' last answers.
func grantNotLive(g grantCheck, timeout time.Duration, last []string) error {
	var answers []string
	for _, a := range last {
		if a != "" {
			answers = append(answers, a)
		}
	}
	return fmt.Errorf("%s did not let %s in as etcd user %s within %s (last answer: %s). Check that the mesh apiserver of %s runs and can read its ConfigMap %s/%s (its log and Events say why it does not create the user); if its etcd users are managed outside it (--etcd-manage-auth=false), create user %s with role %s there",
		g.target.label(), g.reader.config.ClusterName, g.user(), timeout, strings.Join(answers, "; "),
		g.target.label(), meshconfig.Namespace, meshconfig.RemoteReadersConfigMap, g.user(), protocol.RemoteUser)
}
