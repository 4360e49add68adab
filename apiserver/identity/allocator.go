// Package identity allocates a cluster's numeric security identities: each
// distinct set of security labels gets one, with the cluster ID in its high
// bits (protocol.ComposeIdentity). The mapping is kept in etcd under a
// private prefix that only the root role can read, so identities survive
// restarts, and is published under the protocol's identities prefix. An
// identity no pod uses is released after a grace period, so readers that
// still hold it in flight do not see it reused at once.
//
// It must not import agent/, datapath/, cmd/ or Kubernetes clients.
package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/apiserver/kvstore"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// PrivatePrefix holds the allocator's own record, <PrivatePrefix><id> =
// the labels. No read-only user can read it (PROTOCOL.md "Access" grants
// nothing outside cilium/).
const PrivatePrefix = "isthmus/identities/v1/"

// PrivateKey is the private record of id.
func PrivateKey(id protocol.NumericIdentity) string {
	return PrivatePrefix + strconv.FormatUint(uint64(id), 10)
}

// DefaultGrace is how long an unused identity is kept by default.
const DefaultGrace = 15 * time.Minute

// Store receives the allocator's writes; kvstore.Writer is one.
type Store interface {
	Put(key string, value []byte, since time.Time)
	Delete(key string, since time.Time)
}

// Config configures an Allocator.
type Config struct {
	ClusterID            uint32
	MaxConnectedClusters uint32
	// Grace is how long an identity no pod uses stays allocated. Zero
	// means DefaultGrace.
	Grace time.Duration
	// Store receives every allocation and release. Required.
	Store Store
}

// ErrExhausted is returned when every local identity of the cluster is in
// use.
var ErrExhausted = errors.New("no free identity")

// Allocator hands out identities. It is safe for concurrent use.
type Allocator struct {
	logger *slog.Logger
	cfg    Config
	min    uint32 // first local part
	max    uint32 // last local part

	mu      sync.Mutex // guards the fields below
	byLabel map[string]*entry
	byID    map[protocol.NumericIdentity]*entry
	next    uint32 // local part to try first
}

type entry struct {
	id          protocol.NumericIdentity
	labels      protocol.Labels
	value       []byte // labels in the protocol's value form
	refs        int
	unusedSince time.Time // when refs dropped to 0
}

// New returns an empty allocator.
func New(logger *slog.Logger, cfg Config) (*Allocator, error) {
	if err := protocol.ValidateClusterID(cfg.ClusterID, cfg.MaxConnectedClusters); err != nil {
		return nil, err
	}
	if cfg.Store == nil {
		return nil, errors.New("identity allocator: no store given")
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	return &Allocator{
		logger:  logger,
		cfg:     cfg,
		min:     protocol.MinLocalIdentity,
		max:     protocol.MaxLocalIdentity(cfg.MaxConnectedClusters),
		byLabel: make(map[string]*entry),
		byID:    make(map[protocol.NumericIdentity]*entry),
		next:    protocol.MinLocalIdentity,
	}, nil
}

// Restore reads the private record from etcd into the allocator, before any
// Acquire. Restored identities count as unused from now until acquired, and
// are published again (Store writes nothing for values etcd holds). Records
// that are malformed, belong to another cluster ID or repeat a label set
// are skipped and logged; their keys are left for the caller's sweep.
func (a *Allocator) Restore(ctx context.Context, cli *clientv3.Client) (int, error) {
	now := time.Now()
	n := 0
	err := kvstore.List(ctx, cli, PrivatePrefix, func(key string, value []byte) {
		id, labels, err := a.parseRecord(key, value)
		if err != nil {
			a.logger.Warn("skipping identity record", logfields.Key, key, logfields.Error, err)
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if other, dup := a.byLabel[labels.String()]; dup {
			a.logger.Warn("skipping identity record: labels already have an identity", logfields.Key, key, logfields.Identity, uint32(other.id))
			return
		}
		e := &entry{id: id, labels: labels, value: []byte(labels.String()), unusedSince: now}
		a.byLabel[labels.String()] = e
		a.byID[id] = e
		if local := id.LocalPart(a.cfg.MaxConnectedClusters); local >= a.next {
			a.next = local + 1
		}
		a.publish(e, now)
		n++
	})
	return n, err
}

func (a *Allocator) parseRecord(key string, value []byte) (protocol.NumericIdentity, protocol.Labels, error) {
	n, err := strconv.ParseUint(strings.TrimPrefix(key, PrivatePrefix), 10, 32)
	if err != nil {
		return 0, nil, fmt.Errorf("key does not end in a numeric identity")
	}
	id := protocol.NumericIdentity(n)
	if err := protocol.ValidateIdentityCluster(id, a.cfg.ClusterID, a.cfg.MaxConnectedClusters); err != nil {
		return 0, nil, err
	}
	labels, err := protocol.ParseLabels(string(value))
	if err != nil {
		return 0, nil, err
	}
	return id, labels, nil
}

func (a *Allocator) publish(e *entry, since time.Time) {
	a.cfg.Store.Put(PrivateKey(e.id), e.value, since)
	a.cfg.Store.Put(protocol.IdentityKey(e.id), e.value, since)
}

// Acquire returns the identity of labels, allocating one when the set is
// new, and counts one more user of it. since is when the change was
// observed.
func (a *Allocator) Acquire(labels protocol.Labels, since time.Time) (protocol.NumericIdentity, error) {
	key := labels.String()
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.byLabel[key]; ok {
		e.refs++
		e.unusedSince = time.Time{}
		return e.id, nil
	}
	id, err := a.free()
	if err != nil {
		return 0, err
	}
	e := &entry{id: id, labels: labels, value: []byte(key), refs: 1}
	a.byLabel[key] = e
	a.byID[id] = e
	a.publish(e, since)
	return id, nil
}

// free finds an unallocated identity, going round from the last one
// handed out so a released identity is not reused soon. Callers hold a.mu.
func (a *Allocator) free() (protocol.NumericIdentity, error) {
	span := a.max - a.min + 1
	for i := uint32(0); i < span; i++ {
		local := a.min + (a.next-a.min+i)%span
		id := protocol.ComposeIdentity(a.cfg.ClusterID, local, a.cfg.MaxConnectedClusters)
		if _, used := a.byID[id]; !used {
			a.next = local + 1
			return id, nil
		}
	}
	return 0, fmt.Errorf("%w: all %d identities of cluster ID %d are allocated", ErrExhausted, span, a.cfg.ClusterID)
}

// Release counts one user of id fewer. When none is left, id is released
// after the grace period (see GC).
func (a *Allocator) Release(id protocol.NumericIdentity, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.byID[id]
	if !ok || e.refs == 0 {
		a.logger.Error("release of an identity not in use", logfields.Identity, uint32(id))
		return
	}
	e.refs--
	if e.refs == 0 {
		e.unusedSince = now
	}
}

// GC releases identities unused for the grace period as of now and returns
// how many.
func (a *Allocator) GC(now time.Time) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for id, e := range a.byID {
		if e.refs > 0 || now.Sub(e.unusedSince) < a.cfg.Grace {
			continue
		}
		delete(a.byID, id)
		delete(a.byLabel, e.labels.String())
		a.cfg.Store.Delete(PrivateKey(id), now)
		a.cfg.Store.Delete(protocol.IdentityKey(id), now)
		n++
	}
	return n
}

// Lookup returns the identity of labels, if allocated.
func (a *Allocator) Lookup(labels protocol.Labels) (protocol.NumericIdentity, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.byLabel[labels.String()]
	if !ok {
		return 0, false
	}
	return e.id, true
}

// Len returns the number of allocated identities, in use or in grace.
func (a *Allocator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byID)
}
