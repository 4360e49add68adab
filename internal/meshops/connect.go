package meshops

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// ConnectOptions say how to connect clusters.
type ConnectOptions struct {
	// Mode says who reads whom. Zero means Bidirectional.
	Mode ConnectionMode
	// SkipEndpointCheck skips dialling the mesh endpoints of the clusters
	// that are read. Use it where the clusters reach each other at
	// addresses the caller cannot (split-horizon networks); then a wrong
	// or unreachable endpoint shows only later, in the agents' status.
	SkipEndpointCheck bool
	// EndpointTimeout bounds the check of each endpoint. Zero means
	// DefaultEndpointTimeout.
	EndpointTimeout time.Duration
	// GrantTimeout bounds the wait, between writing the grants and the
	// entries, until each cluster that is read lets its reader in with
	// the certificate of the entry: its mesh apiserver creates the etcd
	// user asynchronously. When the wait times out, no entry is written
	// (a GrantError). Zero means DefaultGrantTimeout; negative: no wait,
	// the entries are written right after the grants. There is no wait in
	// a dry run or with SkipEndpointCheck.
	GrantTimeout time.Duration
	// CertValidity is the lifetime of issued client certificates. Zero
	// means certs.DefaultCertValidity.
	CertValidity time.Duration
	// DryRun checks everything and reports what would change, writing
	// nothing.
	DryRun bool
	// Progress, when set, is told what is going on as it happens.
	Progress func(msg string)
}

func (o *ConnectOptions) progress(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(fmt.Sprintf(format, args...))
	}
}

// Connection is one direction: the clusters of Reader read the mesh state
// of Target.
type Connection struct {
	Reader        string `json:"reader"`
	ReaderContext string `json:"readerContext"`
	Target        string `json:"target"`
	TargetContext string `json:"targetContext"`
}

func (c Connection) String() string {
	return fmt.Sprintf("%s (context %s) reads %s (context %s)", c.Reader, c.ReaderContext, c.Target, c.TargetContext)
}

// Result says what Connect or Disconnect did.
type Result struct {
	Connections []Connection `json:"connections"`
	// Changes lists what was written (or would be, in a dry run); empty
	// when nothing needed to change.
	Changes []Change `json:"changes"`
	// Notes are things the user should know: checks that could not be
	// made, endpoints that do not answer beside ones that do.
	Notes []string `json:"notes,omitempty"`
}

// Connect connects source with destinations as opts.Mode says. For each
// direction "X reads Y" it issues a client certificate of user remote-<X>
// signed by Y's CA, grants X in Y's remote-readers ConfigMap (the mesh
// apiserver of Y keeps its etcd users in step), and writes the entry for Y
// into X's clustermesh Secret; it also keeps each cluster's own entry
// current.
//
// Before writing anything it checks that the clusters are compatible (see
// CheckError) and, unless opts.SkipEndpointCheck, that every cluster that
// is read answers at its mesh endpoints as itself. Grants are written
// before the entries that use them, so an interrupted run leaves only
// unused grants, which the next run completes. Unless
// opts.SkipEndpointCheck, Connect then waits (opts.GrantTimeout) until
// each grant is live, reading each target with the certificate of its
// entry, and writes the entries only then: the agents' first read
// succeeds, and a target that does not act on the grant leaves no entry
// behind (a GrantError). A certificate still valid for more than a third
// of its lifetime is kept, so running Connect twice changes nothing.
func Connect(ctx context.Context, source *Cluster, destinations []*Cluster, opts ConnectOptions) (*Result, error) {
	mode := opts.Mode
	if mode == "" {
		mode = Bidirectional
	}
	if _, err := ParseConnectionMode(string(mode)); err != nil {
		return nil, err
	}
	clusters, err := distinctClusters(source, destinations)
	if err != nil {
		return nil, err
	}
	opts.progress("reading the mesh configuration of %d clusters", len(clusters))
	states, err := readStates(ctx, clusters)
	if err != nil {
		return nil, err
	}
	dirs := directions(mode, len(states))
	res := &Result{}
	problems, notes := checkCompatible(states, dirs)
	res.Notes = append(res.Notes, notes...)
	if len(problems) > 0 {
		return res, &CheckError{Problems: problems}
	}
	targets := map[int]bool{}
	for _, d := range dirs {
		targets[d.target] = true
		res.Connections = append(res.Connections, connection(states, d))
	}
	endpointTimeout := opts.EndpointTimeout
	if endpointTimeout <= 0 {
		endpointTimeout = DefaultEndpointTimeout
	}
	if !opts.SkipEndpointCheck {
		var probed []*clusterState
		for _, i := range slices.Sorted(maps.Keys(targets)) {
			probed = append(probed, states[i])
			opts.progress("checking that %s answers at %v", states[i].label(), states[i].config.MeshEndpoints)
		}
		problems, notes := probeClusters(ctx, probed, endpointTimeout)
		res.Notes = append(res.Notes, notes...)
		if len(problems) > 0 {
			return res, &CheckError{Problems: problems}
		}
	}

	// Issue every certificate before the first write.
	now := time.Now()
	entries := make([][]meshconfig.ClusterEntry, len(states)) // by reader
	grants := make([][]string, len(states))                   // by target
	var checks []grantCheck
	for _, d := range dirs {
		r, t := states[d.reader], states[d.target]
		e, err := remoteEntry(r, t, opts.CertValidity, now)
		if err != nil {
			return res, err
		}
		entries[d.reader] = append(entries[d.reader], e)
		grants[d.target] = append(grants[d.target], r.config.ClusterName)
		checks = append(checks, grantCheck{reader: r, target: t, entry: e})
	}
	for i, s := range states {
		if own, ok := ownEntry(s); ok {
			entries[i] = append(entries[i], own)
		}
	}

	// Grants first: an entry without its grant would only fail.
	for i, s := range states {
		if len(grants[i]) == 0 {
			continue
		}
		opts.progress("making sure %s may read %s", strings.Join(grants[i], ", "), s.label())
		w := writer{c: s.c, dryRun: opts.DryRun, changes: &res.Changes}
		err := w.editConfigMap(ctx, meshconfig.RemoteReadersConfigMap, "grant read access", func(d map[string]string) error {
			for _, reader := range grants[i] {
				d[reader] = protocol.RemoteUserFor(reader)
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("%w (the grants written so far are harmless; run connect again)", err)
		}
	}
	// Then wait until the grants are live; the targets answered the
	// probe, so this reaches them.
	if !opts.DryRun && !opts.SkipEndpointCheck && opts.GrantTimeout >= 0 {
		timeout := opts.GrantTimeout
		if timeout == 0 {
			timeout = DefaultGrantTimeout
		}
		if err := waitGrants(ctx, checks, timeout, endpointTimeout, opts.progress); err != nil {
			return res, err
		}
	}
	for i, s := range states {
		if len(entries[i]) == 0 {
			continue
		}
		opts.progress("making sure the clustermesh Secret of %s holds %s", s.label(), entryNames(entries[i]))
		w := writer{c: s.c, dryRun: opts.DryRun, changes: &res.Changes}
		if err := w.putEntries(ctx, "connection entries", entries[i]); err != nil {
			return res, fmt.Errorf("%w (run connect again to complete the connection)", err)
		}
	}
	return res, nil
}

func entryNames(entries []meshconfig.ClusterEntry) string {
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Cluster
	}
	return strings.Join(names, ", ")
}

// distinctClusters returns source followed by destinations, refusing a
// context given twice or connected to itself.
func distinctClusters(source *Cluster, destinations []*Cluster) ([]*Cluster, error) {
	if source == nil || len(destinations) == 0 {
		return nil, errors.New("no destination given: name at least one cluster to connect with (--destination-context)")
	}
	clusters := append([]*Cluster{source}, destinations...)
	seen := map[string]bool{}
	for _, c := range clusters {
		if c == nil {
			return nil, errors.New("a cluster is nil")
		}
		if seen[c.context] {
			if c.context == source.context {
				return nil, fmt.Errorf("context %q is both the source and a destination: a cluster cannot be connected to itself", c.context)
			}
			return nil, fmt.Errorf("context %q is given twice", c.context)
		}
		seen[c.context] = true
	}
	return clusters, nil
}

// readStates reads the clusters concurrently.
func readStates(ctx context.Context, clusters []*Cluster) ([]*clusterState, error) {
	states := make([]*clusterState, len(clusters))
	errs := make([]error, len(clusters))
	var wg sync.WaitGroup
	for i, c := range clusters {
		wg.Go(func() { states[i], errs[i] = readState(ctx, c) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w\nNothing was changed.", err)
	}
	return states, nil
}

func connection(states []*clusterState, d direction) Connection {
	r, t := states[d.reader], states[d.target]
	return Connection{Reader: r.config.ClusterName, ReaderContext: r.c.context, Target: t.config.ClusterName, TargetContext: t.c.context}
}

// remoteEntry is the clustermesh entry with which reader reads target:
// the one it has when that is still good, otherwise one with a new
// certificate.
func remoteEntry(reader, target *clusterState, validity time.Duration, now time.Time) (meshconfig.ClusterEntry, error) {
	user := protocol.RemoteUserFor(reader.config.ClusterName)
	e := meshconfig.ClusterEntry{
		Cluster:   target.config.ClusterName,
		Endpoints: slices.Clone(target.config.MeshEndpoints),
		CA:        target.ca.CertPEM(),
	}
	if have, ok := reader.entries[target.config.ClusterName]; ok {
		if _, reason := keepable(target.ca, have.Cert, have.Key, user, x509.ExtKeyUsageClientAuth, now); reason == "" {
			e.Cert, e.Key = have.Cert, have.Key
			return e, nil
		}
	}
	kp, err := target.ca.Issue(certs.Request{CommonName: user, Usage: certs.UsageClient, Validity: validity})
	if err != nil {
		return e, fmt.Errorf("issue the certificate of %s for %s: %w", user, target.label(), err)
	}
	e.Cert, e.Key = kp.CertPEM, kp.KeyPEM
	return e, nil
}

// ownEntry is the entry with which a cluster's agents read its own state:
// its endpoints, its CA and the local-<c> certificate. ok is false while
// the cluster has no mesh endpoint.
func ownEntry(s *clusterState) (meshconfig.ClusterEntry, bool) {
	if len(s.config.MeshEndpoints) == 0 {
		return meshconfig.ClusterEntry{}, false
	}
	certPEM, keyPEM := secretKeyPair(s.local)
	return meshconfig.ClusterEntry{
		Cluster:   s.config.ClusterName,
		Endpoints: slices.Clone(s.config.MeshEndpoints),
		CA:        s.ca.CertPEM(),
		Cert:      certPEM,
		Key:       keyPEM,
	}, true
}
