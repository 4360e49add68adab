package kvstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// WriterConfig configures a Writer.
type WriterConfig struct {
	// MaxOpsPerTxn bounds the operations of one transaction; it must not
	// exceed the etcd server's --max-txn-ops. Zero means 128, etcd's
	// default.
	MaxOpsPerTxn int
	// MaxBytesPerTxn bounds the keys and values of one transaction, below
	// etcd's request size limit. Zero means 1 MiB.
	MaxBytesPerTxn int
	// Prefixes are counted in Metrics.Keys: the number of keys under each
	// that etcd holds. Label is the metric label of each prefix.
	Prefixes map[string]string
	// Metrics receive the writer's measurements. Nil fields are skipped.
	Metrics Metrics
	// RetryBackoff is the first wait after a failed transaction, doubled up
	// to 32 times it. Zero means 100ms.
	RetryBackoff time.Duration
}

// Writer keeps etcd keys at the values it is given: Put and Delete record
// the wish and return at once; a background loop (Run) commits changes in
// batched transactions. A value equal to what etcd holds (as last written
// or loaded) is not written again, and a key changed several times before
// its commit is written once, with its last value.
//
// The Writer assumes it is the only writer of its keys. It is safe for
// concurrent use.
type Writer struct {
	cli    *clientv3.Client
	logger *slog.Logger
	cfg    WriterConfig
	seed   maphash.Seed
	kick   chan struct{}

	mu sync.Mutex // guards the fields below
	// written holds the hash of each key's value in etcd, as last committed
	// or loaded.
	written map[string]uint64
	// inflight holds the ops of the transaction being committed.
	inflight map[string]op
	// pending holds the ops waiting for a transaction.
	pending map[string]op
	// stale holds loaded keys not Put or Deleted since; Sweep deletes them.
	stale map[string]struct{}
	// seq numbers every Put and Delete, for Flush.
	seq     uint64
	waiters []*waiter
	counts  map[string]int // label -> keys held under its prefix
}

type op struct {
	value []byte // nil: delete
	hash  uint64
	seq   uint64
	since time.Time // when the change was first observed
}

func (o op) del() bool { return o.value == nil }

// waiter is a Flush waiting for keys to be committed at a sequence number
// at least the one they had when it started.
type waiter struct {
	remaining map[string]uint64
	done      chan struct{}
}

// NewWriter returns a Writer for cli; call Run to start committing.
func NewWriter(logger *slog.Logger, cli *clientv3.Client, cfg WriterConfig) *Writer {
	if cfg.MaxOpsPerTxn <= 0 {
		cfg.MaxOpsPerTxn = 128
	}
	if cfg.MaxBytesPerTxn <= 0 {
		cfg.MaxBytesPerTxn = 1 << 20
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 100 * time.Millisecond
	}
	if cfg.Metrics.Keys != nil {
		for _, label := range cfg.Prefixes {
			cfg.Metrics.Keys.WithLabelValues(label).Set(0)
		}
	}
	return &Writer{
		cli:      cli,
		logger:   logger,
		cfg:      cfg,
		seed:     maphash.MakeSeed(),
		kick:     make(chan struct{}, 1),
		written:  make(map[string]uint64),
		inflight: make(map[string]op),
		pending:  make(map[string]op),
		stale:    make(map[string]struct{}),
		counts:   make(map[string]int),
	}
}

// target returns the hash a key will have in etcd once the transaction in
// flight commits, and whether the key will exist. Callers hold w.mu.
func (w *Writer) target(key string) (uint64, bool) {
	if o, ok := w.inflight[key]; ok {
		return o.hash, !o.del()
	}
	h, ok := w.written[key]
	return h, ok
}

// Put asks for key to hold value. since is when the change that led to it
// was observed (for the export lag); zero means now.
func (w *Writer) Put(key string, value []byte, since time.Time) {
	if value == nil {
		value = []byte{}
	}
	w.set(key, op{value: value, hash: maphash.Bytes(w.seed, value), since: since})
}

// Delete asks for key to be absent.
func (w *Writer) Delete(key string, since time.Time) {
	w.set(key, op{since: since})
}

func (w *Writer) set(key string, o op) {
	if o.since.IsZero() {
		o.since = time.Now()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.stale, key)
	w.seq++
	o.seq = w.seq
	h, exists := w.target(key)
	if exists == !o.del() && (o.del() || h == o.hash) {
		// etcd holds (or is about to hold) this already.
		if _, ok := w.pending[key]; ok {
			delete(w.pending, key)
			if in, ok := w.inflight[key]; ok {
				w.retarget(key, in.seq)
			} else {
				w.resolve(key, o.seq)
			}
		}
		return
	}
	if p, ok := w.pending[key]; ok && p.since.Before(o.since) {
		o.since = p.since
	}
	w.pending[key] = o
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// resolve tells waiters that key is in etcd as of seq. Callers hold w.mu.
func (w *Writer) resolve(key string, seq uint64) {
	kept := w.waiters[:0]
	for _, wt := range w.waiters {
		if s, ok := wt.remaining[key]; ok && s <= seq {
			delete(wt.remaining, key)
		}
		if len(wt.remaining) == 0 {
			close(wt.done)
			continue
		}
		kept = append(kept, wt)
	}
	w.waiters = kept
}

// retarget makes waiters for key wait for the change in flight (at seq)
// instead of a pending one that was dropped. Callers hold w.mu.
func (w *Writer) retarget(key string, seq uint64) {
	for _, wt := range w.waiters {
		if _, ok := wt.remaining[key]; ok {
			wt.remaining[key] = seq
		}
	}
}

// Flush waits until every Put and Delete made before it is committed (or
// superseded by a later one that is).
func (w *Writer) Flush(ctx context.Context) error {
	w.mu.Lock()
	wt := &waiter{remaining: make(map[string]uint64), done: make(chan struct{})}
	for k, o := range w.pending {
		wt.remaining[k] = o.seq
	}
	for k, o := range w.inflight {
		if _, ok := wt.remaining[k]; !ok {
			wt.remaining[k] = o.seq
		}
	}
	if len(wt.remaining) == 0 {
		w.mu.Unlock()
		return nil
	}
	w.waiters = append(w.waiters, wt)
	w.mu.Unlock()
	select {
	case <-wt.done:
		return nil
	case <-ctx.Done():
		w.mu.Lock()
		for i, x := range w.waiters {
			if x == wt {
				w.waiters = append(w.waiters[:i], w.waiters[i+1:]...)
				break
			}
		}
		w.mu.Unlock()
		return ctx.Err()
	}
}

// Pending returns the number of changes not yet committed.
func (w *Writer) Pending() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending) + len(w.inflight)
}

// Load reads every key under prefix from etcd, so that values etcd already
// holds are not written again and keys nobody asks for can be swept. Call
// it before the first Put under prefix.
func (w *Writer) Load(ctx context.Context, prefix string) (int, error) {
	n := 0
	err := List(ctx, w.cli, prefix, func(key string, value []byte) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if _, seen := w.written[key]; !seen {
			w.count(key, 1)
		}
		w.written[key] = maphash.Bytes(w.seed, value)
		w.stale[key] = struct{}{}
		n++
	})
	return n, err
}

// List calls fn for every key under prefix, in pages of one consistent
// revision.
func List(ctx context.Context, cli *clientv3.Client, prefix string, fn func(key string, value []byte)) error {
	const page = 5000
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := cli.Get(ctx, key, opts...)
		if err != nil {
			return fmt.Errorf("list %s: %w", prefix, err)
		}
		rev = resp.Header.Revision
		for _, kv := range resp.Kvs {
			fn(string(kv.Key), kv.Value)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Sweep deletes the keys under prefix that were loaded and neither Put nor
// Deleted since: what a restart left behind. It returns how many.
func (w *Writer) Sweep(prefix string) int {
	w.mu.Lock()
	var keys []string
	for k := range w.stale {
		if strings.HasPrefix(k, prefix) {
			keys = append(keys, k)
		}
	}
	w.mu.Unlock()
	now := time.Now()
	for _, k := range keys {
		w.Delete(k, now)
	}
	return len(keys)
}

// count adjusts the key count of the prefix key falls under. Callers hold
// w.mu.
func (w *Writer) count(key string, delta int) {
	for p, label := range w.cfg.Prefixes {
		if strings.HasPrefix(key, p) {
			w.counts[label] += delta
			if w.cfg.Metrics.Keys != nil {
				w.cfg.Metrics.Keys.WithLabelValues(label).Set(float64(w.counts[label]))
			}
			return
		}
	}
}

// Run commits changes until ctx ends.
func (w *Writer) Run(ctx context.Context) {
	backoff := w.cfg.RetryBackoff
	for {
		if w.Pending() == 0 {
			select {
			case <-ctx.Done():
				return
			case <-w.kick:
			}
		}
		err := w.commitBatch(ctx)
		if err == nil {
			backoff = w.cfg.RetryBackoff
			continue
		}
		if ctx.Err() != nil {
			return
		}
		w.logger.Warn("etcd write failed; retrying", logfields.Error, err, "retryIn", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 32*w.cfg.RetryBackoff)
	}
}

// commitBatch commits one transaction of pending changes.
func (w *Writer) commitBatch(ctx context.Context) error {
	w.mu.Lock()
	ops := make([]clientv3.Op, 0, min(len(w.pending), w.cfg.MaxOpsPerTxn))
	size := 0
	for k, o := range w.pending {
		if len(ops) == w.cfg.MaxOpsPerTxn || (len(ops) > 0 && size+len(k)+len(o.value) > w.cfg.MaxBytesPerTxn) {
			break
		}
		size += len(k) + len(o.value)
		if o.del() {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(o.value)))
		}
		w.inflight[k] = o
		delete(w.pending, k)
	}
	w.mu.Unlock()
	if len(ops) == 0 {
		return nil
	}

	start := time.Now()
	_, err := w.cli.Txn(ctx).Then(ops...).Commit()
	now := time.Now()

	w.mu.Lock()
	m := w.cfg.Metrics
	if m.TxnDuration != nil {
		m.TxnDuration.Observe(now.Sub(start).Seconds())
	}
	if err == nil {
		w.committed(now, w.inflight)
		clear(w.inflight)
		w.mu.Unlock()
		return nil
	}
	if m.WriteErrors != nil {
		m.WriteErrors.Inc()
	}
	if !refused(err) {
		w.requeueInflight()
		w.mu.Unlock()
		return fmt.Errorf("commit %d changes: %w", len(ops), err)
	}
	w.mu.Unlock()
	// Something in the batch can never be written; find it by writing
	// each change alone, so the others go through.
	w.commitEach(ctx)
	return nil
}

// refused reports whether etcd refuses a transaction for what it holds,
// not for its own state: retrying the same changes would fail again.
func refused(err error) bool {
	if errors.Is(err, rpctypes.ErrRequestTooLarge) || errors.Is(err, rpctypes.ErrTooManyOps) {
		return true
	}
	// gRPC refuses messages above the client's limit before sending.
	return status.Code(err) == codes.ResourceExhausted && !errors.Is(err, rpctypes.ErrNoSpace)
}

// requeueInflight puts the changes in flight back to pending, unless a
// newer change took their place. Callers hold w.mu.
func (w *Writer) requeueInflight() {
	for k, o := range w.inflight {
		if _, newer := w.pending[k]; !newer {
			w.pending[k] = o
		}
	}
	clear(w.inflight)
}

// commitEach commits the changes in flight one by one. A change etcd
// refuses on its own is dropped with an error log: the key keeps its old
// value, and the others are not held up by it. A change failing for
// another reason goes back to pending.
func (w *Writer) commitEach(ctx context.Context) {
	w.mu.Lock()
	keys := make([]string, 0, len(w.inflight))
	for k := range w.inflight {
		keys = append(keys, k)
	}
	w.mu.Unlock()
	for _, k := range keys {
		w.mu.Lock()
		o := w.inflight[k]
		w.mu.Unlock()
		txnOp := clientv3.OpDelete(k)
		if !o.del() {
			txnOp = clientv3.OpPut(k, string(o.value))
		}
		_, err := w.cli.Txn(ctx).Then(txnOp).Commit()
		w.mu.Lock()
		switch {
		case err == nil:
			w.committed(time.Now(), map[string]op{k: o})
			delete(w.inflight, k)
		case refused(err):
			w.logger.Error("etcd refuses a change; dropping it, the key keeps its old value", logfields.Key, k, "bytes", len(o.value), logfields.Error, err)
			if m := w.cfg.Metrics; m.WriteErrors != nil {
				m.WriteErrors.Inc()
			}
			delete(w.inflight, k)
			w.resolve(k, o.seq)
		}
		w.mu.Unlock()
	}
	w.mu.Lock()
	w.requeueInflight()
	w.mu.Unlock()
}

// committed records changes etcd committed. Callers hold w.mu.
func (w *Writer) committed(now time.Time, ops map[string]op) {
	m := w.cfg.Metrics
	for k, o := range ops {
		_, existed := w.written[k]
		if o.del() {
			delete(w.written, k)
			if existed {
				w.count(k, -1)
			}
		} else {
			w.written[k] = o.hash
			if !existed {
				w.count(k, 1)
			}
		}
		if m.Lag != nil {
			m.Lag.Observe(now.Sub(o.since).Seconds())
		}
		w.resolve(k, o.seq)
	}
	if m.Writes != nil {
		m.Writes.Add(float64(len(ops)))
	}
}
