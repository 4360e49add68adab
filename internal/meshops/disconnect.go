package meshops

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// DisconnectOptions say how to disconnect clusters.
type DisconnectOptions struct {
	// Mode says which directions to remove, as in Connect. Zero means
	// Bidirectional.
	Mode ConnectionMode
	// DryRun reports what would change, writing nothing.
	DryRun bool
	// Progress, when set, is told what is going on as it happens.
	Progress func(msg string)
}

// Disconnect undoes Connect: for each direction "X reads Y" it removes
// Y's entry from X's clustermesh Secret, whereupon X's agents withdraw Y's
// state, and then X's grant from Y's remote-readers ConfigMap, whereupon
// Y's mesh apiserver deletes user remote-<X> and every request with a
// certificate of that user is refused, however long it is still valid.
// etcd checks a watch's permission only when the watch starts, so a watch
// opened before stays open until its connection ends: X's agents close
// theirs when the entry goes, which is why it goes first. There is
// nothing to wait for. Each cluster's own entry stays. Every cluster is
// read before the first write; running it twice changes nothing.
func Disconnect(ctx context.Context, source *Cluster, destinations []*Cluster, opts DisconnectOptions) (*Result, error) {
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
	progress := func(format string, args ...any) {
		if opts.Progress != nil {
			opts.Progress(fmt.Sprintf(format, args...))
		}
	}
	progress("reading the mesh configuration of %d clusters", len(clusters))
	states, err := readStates(ctx, clusters)
	if err != nil {
		return nil, err
	}
	var problems []error
	for _, s := range states {
		if s.notEnabled != nil {
			problems = append(problems, s.notEnabled)
		}
	}
	res := &Result{}
	if len(problems) > 0 {
		return res, &CheckError{Problems: problems}
	}
	dirs := directions(mode, len(states))
	drop := make([][]string, len(states))   // entries to delete, by reader
	revoke := make([][]string, len(states)) // grants to revoke, by target
	for _, d := range dirs {
		r, t := states[d.reader], states[d.target]
		if r.config.ClusterName == t.config.ClusterName {
			// Never a cluster's own entry.
			continue
		}
		res.Connections = append(res.Connections, connection(states, d))
		drop[d.reader] = append(drop[d.reader], t.config.ClusterName)
		revoke[d.target] = append(revoke[d.target], r.config.ClusterName)
	}
	for i, s := range states {
		if len(drop[i]) == 0 {
			continue
		}
		progress("removing %s from the clustermesh Secret of %s", strings.Join(drop[i], ", "), s.label())
		w := writer{c: s.c, dryRun: opts.DryRun, changes: &res.Changes}
		if err := w.deleteEntries(ctx, "disconnect", drop[i]); err != nil {
			return res, fmt.Errorf("%w (run disconnect again to complete it)", err)
		}
	}
	for i, s := range states {
		if len(revoke[i]) == 0 {
			continue
		}
		progress("revoking the read access of %s to %s", strings.Join(revoke[i], ", "), s.label())
		w := writer{c: s.c, dryRun: opts.DryRun, changes: &res.Changes}
		err := w.editConfigMap(ctx, meshconfig.RemoteReadersConfigMap, "revoke read access", func(d map[string]string) error {
			for _, reader := range revoke[i] {
				delete(d, reader)
			}
			return nil
		})
		if err != nil {
			return res, fmt.Errorf("%w (run disconnect again to complete it)", err)
		}
	}
	return res, nil
}

// Forget removes the entries of the named clusters from cluster c's
// clustermesh Secret, so c's agents withdraw their state, without
// touching those clusters: for a cluster that is gone or unreachable,
// where Disconnect cannot run. Their grants to c, if they still exist,
// stay. c's own entry cannot be forgotten.
func Forget(ctx context.Context, c *Cluster, clusters []string, opts DisconnectOptions) (*Result, error) {
	if len(clusters) == 0 {
		return nil, errors.New("no cluster name given to forget")
	}
	s, err := readState(ctx, c)
	if err != nil {
		return nil, err
	}
	if s.notEnabled != nil {
		return nil, &CheckError{Problems: []error{s.notEnabled}}
	}
	var problems []error
	for _, name := range clusters {
		if err := protocol.ValidateClusterName(name); err != nil {
			problems = append(problems, err)
		}
		if name == s.config.ClusterName {
			problems = append(problems, fmt.Errorf("%q is %s itself; its own entry is how its agents read its state, and is never removed", name, s.label()))
		}
	}
	if len(problems) > 0 {
		return nil, &CheckError{Problems: problems}
	}
	res := &Result{}
	for _, name := range clusters {
		if _, ok := s.entries[name]; ok {
			res.Connections = append(res.Connections, Connection{Reader: s.config.ClusterName, ReaderContext: c.context, Target: name})
		}
	}
	if opts.Progress != nil {
		opts.Progress(fmt.Sprintf("removing %s from the clustermesh Secret of %s", strings.Join(clusters, ", "), s.label()))
	}
	w := writer{c: c, dryRun: opts.DryRun, changes: &res.Changes}
	if err := w.deleteEntries(ctx, "forget", clusters); err != nil {
		return res, err
	}
	return res, nil
}
