package kvstore

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// Session keeps keys attached to a lease that lives as long as the
// apiserver does: when it stops, or loses etcd for longer than the TTL, the
// keys vanish. A lease lost while the apiserver runs is granted anew and
// the keys written again. It is safe for concurrent use.
type Session struct {
	cli    *clientv3.Client
	logger *slog.Logger
	ttl    time.Duration

	grantMu sync.Mutex // serialises granting a lease; held during the grant

	mu    sync.Mutex // guards the fields below
	lease clientv3.LeaseID
	keys  map[string]string
}

// NewSession returns a session whose lease has the given TTL (at least 5
// seconds). Call Run to keep it alive.
func NewSession(logger *slog.Logger, cli *clientv3.Client, ttl time.Duration) *Session {
	return &Session{cli: cli, logger: logger, ttl: max(ttl, 5*time.Second), keys: make(map[string]string)}
}

func (s *Session) current() clientv3.LeaseID {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lease
}

// ensureLease returns the live lease, granting one (and writing every key
// again under it) when there is none.
func (s *Session) ensureLease(ctx context.Context) (clientv3.LeaseID, error) {
	s.grantMu.Lock()
	defer s.grantMu.Unlock()
	if id := s.current(); id != 0 {
		return id, nil
	}
	resp, err := s.cli.Grant(ctx, int64(s.ttl/time.Second))
	if err != nil {
		return 0, fmt.Errorf("grant lease: %w", err)
	}
	s.mu.Lock()
	keys := make(map[string]string, len(s.keys))
	for k, v := range s.keys {
		keys[k] = v
	}
	s.mu.Unlock()
	for k, v := range keys {
		if _, err := s.cli.Put(ctx, k, v, clientv3.WithLease(resp.ID)); err != nil {
			return 0, fmt.Errorf("write %s under a new lease: %w", k, err)
		}
	}
	s.mu.Lock()
	s.lease = resp.ID
	s.mu.Unlock()
	return resp.ID, nil
}

// Put writes key attached to the session's lease.
func (s *Session) Put(ctx context.Context, key string, value []byte) error {
	s.mu.Lock()
	s.keys[key] = string(value)
	s.mu.Unlock()
	id, err := s.ensureLease(ctx)
	if err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, key, string(value), clientv3.WithLease(id)); err != nil {
		return fmt.Errorf("write %s: %w", key, err)
	}
	return nil
}

// Delete removes key and stops writing it under new leases.
func (s *Session) Delete(ctx context.Context, key string) error {
	s.mu.Lock()
	delete(s.keys, key)
	s.mu.Unlock()
	if _, err := s.cli.Delete(ctx, key); err != nil {
		return fmt.Errorf("delete %s: %w", key, err)
	}
	return nil
}

// Run keeps the lease alive until ctx ends, then revokes it so the keys
// vanish at once.
func (s *Session) Run(ctx context.Context) {
	backoff := time.Second
	for ctx.Err() == nil {
		id, err := s.ensureLease(ctx)
		if err != nil {
			s.logger.Warn("etcd lease unavailable; retrying", logfields.Error, err, "retryIn", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		ch, err := s.cli.KeepAlive(ctx, id)
		if err == nil {
			for range ch {
			}
		}
		if ctx.Err() != nil {
			break
		}
		// The channel closes when the lease expired or was revoked.
		s.logger.Warn("etcd lease lost; granting a new one", "lease", int64(id), logfields.Error, err)
		s.mu.Lock()
		if s.lease == id {
			s.lease = 0
		}
		s.mu.Unlock()
	}
	if id := s.current(); id != 0 {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := s.cli.Revoke(rctx, id); err != nil {
			s.logger.Warn("revoke etcd lease", logfields.Error, err)
		}
	}
}
