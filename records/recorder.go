package records

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/policy"
)

// Defaults of a Recorder's options.
const (
	DefaultQueueSize       = 1024
	DefaultMaxJournalBytes = 256 << 20
	DefaultMinBackoff      = 100 * time.Millisecond
	DefaultMaxBackoff      = 30 * time.Second
	DefaultWriteTimeout    = 5 * time.Second
	DefaultMaxBatch        = 256
)

// pendingSize bounds the records waiting for a group commit; a caller
// that finds it full waits (within its context) for room.
const pendingSize = 4096

// Recorder writes decision records to a store.
//
// A deny or would-deny is durable before RecordDecision (or Commit)
// returns. Its caller waits while a committer goroutine writes every
// record waiting at that moment in one store transaction (a group commit:
// one fsync for all of them) and releases the waiting callers together;
// records that arrive meanwhile make the next group. When the store fails,
// or has not committed within half the time the earliest caller has left
// (at most the write timeout), the group is appended to an on-disk journal
// (JSON lines) and fsynced instead, and the store is left alone until its
// backoff has passed. When neither holds the record in time the caller
// gets a *NotRecordedError, and must not answer as if it were recorded.
// WithJournalFirst tries the journal first instead
// (docs/benchmark-results.md compares the two).
//
// Other decisions (allow, warn) and Record never wait: they go on a
// bounded in-memory queue that one writer goroutine stores in
// transactions of up to DefaultMaxBatch records; when the queue is full,
// the record is journaled (fsynced) by its caller instead. A crash loses
// those, and only those, still on the queue or in the writer's hands: at
// most the queue size plus one batch.
//
// Nothing journaled is lost: the writer moves the journal to the store,
// retrying with exponential backoff while the store fails, and a Recorder
// opened on a journal left by an earlier process replays it. Records are
// stored at least once; the store keeps one per ID.
type Recorder struct {
	store   evidence.Store
	journal *journal
	log     *slog.Logger
	clock   clock.Clock // of decisions recorded without a time (nil: the real clock)

	queue        chan entry   // decisions stored without waiting
	pending      chan *waiter // decisions whose callers wait for a commit
	maxBatch     int
	journalFirst bool
	writeTimeout time.Duration
	health       health

	kick          chan struct{} // the journal has new records
	stop          chan struct{}
	writerDone    chan struct{}
	committerDone chan struct{}
	closeOnce     sync.Once
	// mu is held for reading while a record is handed over, and for
	// writing to close: after Close no record is left on a channel that
	// nobody reads.
	mu     sync.RWMutex
	closed bool

	stats     Stats
	counter   *prometheus.CounterVec
	queued    prometheus.GaugeFunc
	journaled prometheus.GaugeFunc
	waited    prometheus.Histogram
}

// entry is a queued record. Images are marshalled by the writer, off the
// admission path, from v when hasVerdict.
type entry struct {
	d          evidence.Decision
	v          policy.Verdict
	hasVerdict bool
}

func (e *entry) decision() evidence.Decision {
	if e.hasVerdict && e.d.Images == nil {
		e.d.Images = imagesJSON(e.v)
		e.hasVerdict = false
		e.v = policy.Verdict{}
	}
	sanitize(&e.d)
	return e.d
}

// waiter is a record whose caller waits for a group commit.
type waiter struct {
	d        evidence.Decision
	deadline time.Time  // the caller's; zero for none
	done     chan error // buffered: the committer never waits for the caller
	start    time.Time  // when the caller handed it over
	_        [0]func()  // not comparable
}

// NotRecordedError is returned by Commit and RecordDecision when a record
// could not be made durable: neither the store nor the journal took it
// before the caller's context ended, the journal failed, or the Recorder
// is closed. The record may still be stored later (its write may have
// been under way), but the caller cannot count on it.
type NotRecordedError struct {
	ID  string
	Err error
}

func (e *NotRecordedError) Error() string {
	return fmt.Sprintf("decision record %s not recorded: %v", e.ID, e.Err)
}

func (e *NotRecordedError) Unwrap() error { return e.Err }

// ErrClosed is the cause of a NotRecordedError after Close.
var ErrClosed = errors.New("recorder closed")

// Stats counts what a Recorder did with records since it was created.
type Stats struct {
	// Stored is records written to the store, from the queue, the journal
	// or a commit the journal failed.
	Stored atomic.Int64
	// Committed is records Commit made durable before it returned.
	Committed atomic.Int64
	// Groups is the group commits that made them durable.
	Groups atomic.Int64
	// Spilled is records Record journaled because the queue was full.
	Spilled atomic.Int64
	// Journaled is records appended to the journal by a group commit
	// (the store failed or was too slow, or WithJournalFirst), or because
	// the store failed to take them from the queue.
	Journaled atomic.Int64
	// Replayed is journaled records stored (also counted in Stored).
	Replayed atomic.Int64
	// Dropped is records lost: refused by the store as invalid, unreadable
	// journal lines, or a full or failing journal.
	Dropped atomic.Int64
	// Unrecorded is records whose caller Commit told they were not
	// recorded (*NotRecordedError).
	Unrecorded atomic.Int64
	// StoreErrors is failed store writes.
	StoreErrors atomic.Int64
}

// Option configures a Recorder.
type Option func(*Recorder)

// WithQueueSize sets how many records wait in memory for the writer
// without their callers waiting. The default is DefaultQueueSize.
func WithQueueSize(n int) Option {
	return func(r *Recorder) {
		if n > 0 {
			r.queue = make(chan entry, n)
		}
	}
}

// WithMaxBatch sets the most records written in one store transaction,
// by the writer and by a group commit. The default is DefaultMaxBatch.
func WithMaxBatch(n int) Option {
	return func(r *Recorder) {
		if n > 0 {
			r.maxBatch = n
		}
	}
}

// WithJournalFirst makes a group commit append to the journal first, and
// write to the store only when the journal fails; the writer moves the
// journal to the store within about 100ms. A commit then waits for a
// local fsync rather than a store transaction (with PostgreSQL, a round
// trip and the server's commit), but an acknowledged record is on this
// machine's disk alone until it is moved. The default is store first.
func WithJournalFirst(on bool) Option { return func(r *Recorder) { r.journalFirst = on } }

// WithMaxJournalBytes caps the journal file; records that would take it
// past the cap are dropped and counted. The default is
// DefaultMaxJournalBytes; 0 or less means no cap.
func WithMaxJournalBytes(n int64) Option { return func(r *Recorder) { r.journal.max = n } }

// WithBackoff sets the first and the longest wait between attempts to
// write to a failing store. The defaults are DefaultMinBackoff and
// DefaultMaxBackoff.
func WithBackoff(min, max time.Duration) Option {
	return func(r *Recorder) {
		if min > 0 {
			r.health.min = min
		}
		if max >= r.health.min {
			r.health.max = max
		}
	}
}

// WithWriteTimeout bounds one store write. The default is
// DefaultWriteTimeout.
func WithWriteTimeout(d time.Duration) Option {
	return func(r *Recorder) {
		if d > 0 {
			r.writeTimeout = d
		}
	}
}

// WithLogger sets where failures are logged. The default discards.
func WithLogger(l *slog.Logger) Option { return func(r *Recorder) { r.log = l } }

// WithClock sets the clock that tells the time of decisions recorded
// without one. The default is the real clock.
func WithClock(c clock.Clock) Option { return func(r *Recorder) { r.clock = c } }

// WithRegisterer registers the Recorder's metrics on reg:
// buildguard_decision_records_total{result} (stored, committed, spilled,
// journaled, replayed, dropped, unrecorded, store-error),
// buildguard_decision_records_queued,
// buildguard_decision_journal_bytes (records in the journal, waiting for
// the store) and buildguard_decision_commit_seconds, the time a deny or
// would-deny waited to be durable. The default registers none.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(r *Recorder) {
		r.counter = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_decision_records_total",
			Help: "Decision records by what became of them: stored, committed (made durable before the answer), spilled (queue full, journaled by the admission path), journaled (store failed or too slow), replayed (from the journal), dropped, unrecorded (the answer said so), store-error (failed writes).",
		}, []string{"result"})
		r.queued = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "buildguard_decision_records_queued",
			Help: "Decision records waiting in memory for the store, their callers not waiting.",
		}, func() float64 { return float64(r.Queued()) })
		r.journaled = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "buildguard_decision_journal_bytes",
			Help: "Bytes of decision records in the journal, waiting for the store; it grows while the store is unavailable or too slow.",
		}, func() float64 { return float64(r.journal.depth()) })
		r.waited = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildguard_decision_commit_seconds",
			Help:    "Time a deny or would-deny waited for its record to be durable (group commit to the store or the journal).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		})
		reg.MustRegister(r.counter, r.queued, r.journaled, r.waited)
	}
}

// New returns a Recorder storing to store, with its journal at
// journalPath (created if need be, on a volume that outlives the process),
// and starts its writer, which first replays what the journal holds, and
// its committer. Close stops them.
func New(store evidence.Store, journalPath string, opts ...Option) (*Recorder, error) {
	if journalPath == "" {
		return nil, errors.New("decision journal: empty path")
	}
	j, err := openJournal(journalPath, DefaultMaxJournalBytes)
	if err != nil {
		return nil, err
	}
	r := &Recorder{
		store: store, journal: j, log: logger.OrDiscard(nil),
		queue: make(chan entry, DefaultQueueSize), pending: make(chan *waiter, pendingSize),
		maxBatch: DefaultMaxBatch, writeTimeout: DefaultWriteTimeout,
		health: health{min: DefaultMinBackoff, max: DefaultMaxBackoff},
		kick:   make(chan struct{}, 1), stop: make(chan struct{}),
		writerDone: make(chan struct{}), committerDone: make(chan struct{}),
	}
	for _, o := range opts {
		o(r)
	}
	r.health.backoff = r.health.min
	go r.run()
	go r.commitLoop()
	return r, nil
}

// RecordDecision records a decision before it is answered; it implements
// webhook.DecisionRecorder. A deny or would-deny is committed (see Commit)
// before it returns; anything else is queued, as Decided does, and it
// returns nil at once. A decision without a Time is recorded at the
// Recorder's clock (WithClock).
func (r *Recorder) RecordDecision(ctx context.Context, d decision.Decision) error {
	if v := d.Verdict; v.Allowed && v.Outcome != policy.OutcomeDeny {
		r.Decided(ctx, d)
		return nil
	}
	return r.Commit(ctx, FromDecision(r.stamped(d)))
}

// stamped is d with a Time: its own, or now.
func (r *Recorder) stamped(d decision.Decision) decision.Decision {
	if d.Time.IsZero() {
		d.Time = clock.OrReal(r.clock).Now()
	}
	return d
}

// Commit records d and returns once it is durable: committed to the
// store, or appended to the journal and fsynced. It waits at most until
// ctx ends; an error is always a *NotRecordedError.
func (r *Recorder) Commit(ctx context.Context, d evidence.Decision) error {
	sanitize(&d)
	w := &waiter{d: d, done: make(chan error, 1), start: time.Now()}
	if dl, ok := ctx.Deadline(); ok {
		w.deadline = dl
	}
	err := check(d)
	if err == nil {
		err = ctx.Err()
	}
	if err == nil {
		err = r.submit(ctx, w)
	}
	if err == nil {
		select {
		case err = <-w.done:
		case <-ctx.Done():
			select {
			case err = <-w.done: // committed as the context ended
			default:
				err = ctx.Err()
			}
		}
	}
	if err != nil {
		r.count(&r.stats.Unrecorded, "unrecorded", 1)
		var nre *NotRecordedError
		if !errors.As(err, &nre) {
			err = &NotRecordedError{ID: d.ID, Err: err}
		}
		return err
	}
	r.count(&r.stats.Committed, "committed", 1)
	if r.waited != nil {
		r.waited.Observe(time.Since(w.start).Seconds())
	}
	return nil
}

// check refuses, before it is journaled and acknowledged, a record the
// store would refuse once it is replayed. (sanitize has made its text
// storable.)
func check(d evidence.Decision) error {
	bad := func(field, reason string) error {
		return &evidence.InvalidError{Item: "decision", Index: -1, Field: field, Reason: reason}
	}
	switch {
	case d.ID == "":
		return bad("ID", "is empty")
	case d.Time.IsZero():
		return bad("Time", "is zero")
	case len(d.Images) > 0 && !json.Valid(d.Images):
		return bad("Images", "is not valid JSON")
	case !utf8.Valid(d.Images):
		return bad("Images", "is not valid UTF-8")
	case bytes.Contains(d.Images, []byte(`\u0000`)):
		return bad("Images", "contains a NUL character")
	}
	return nil
}

func (r *Recorder) submit(ctx context.Context, w *waiter) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return ErrClosed
	}
	select {
	case r.pending <- w:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Decided records a decision without waiting for the store, whatever its
// verdict; it implements decision.Observer.
func (r *Recorder) Decided(_ context.Context, d decision.Decision) {
	d = r.stamped(d)
	r.enqueue(entry{d: header(d), v: d.Verdict, hasVerdict: true})
}

// Record records d. It never waits for the store: d goes on the queue or,
// when the queue is full, into the journal.
func (r *Recorder) Record(d evidence.Decision) { r.enqueue(entry{d: d}) }

func (r *Recorder) enqueue(e entry) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		r.count(&r.stats.Dropped, "dropped", 1)
		r.log.Error("decision record lost: recorder closed", "uid", e.d.ID)
		return
	}
	select {
	case r.queue <- e:
		return
	default:
	}
	r.count(&r.stats.Spilled, "spilled", 1)
	if err := r.journal.spill(e.decision()); err != nil {
		r.count(&r.stats.Dropped, "dropped", 1)
		r.log.Error("decision record lost: queue and journal full", "uid", e.d.ID, "error", err)
		return
	}
	r.kickWriter()
}

func (r *Recorder) kickWriter() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Queued returns how many records wait in memory for the writer.
func (r *Recorder) Queued() int { return len(r.queue) }

// Stats returns the Recorder's counters.
func (r *Recorder) Stats() *Stats { return &r.stats }

// Close stops the writer and the committer: records still queued or
// waiting for a commit are stored, or journaled if the store fails or
// does not answer within the write timeout, for the next Recorder on the
// journal to replay. Call it after the last Record: records given after
// Close are dropped and counted (Commit returns a *NotRecordedError). It
// does not close the store.
func (r *Recorder) Close() error {
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		close(r.stop)
		r.mu.Unlock()
	})
	<-r.committerDone
	<-r.writerDone
	return r.journal.close()
}

func (r *Recorder) count(c *atomic.Int64, result string, n int) {
	if n == 0 {
		return
	}
	c.Add(int64(n))
	if r.counter != nil && result != "" {
		r.counter.WithLabelValues(result).Add(float64(n))
	}
}

// health is what the Recorder knows of the store: down after a failed
// write, and not tried again before retryAt, which backs off
// exponentially. The writer and the committer share it.
type health struct {
	mu       sync.Mutex
	down     bool
	retryAt  time.Time
	backoff  time.Duration
	min, max time.Duration
}

// usable reports whether the store may be written to at now.
func (h *health) usable(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.down || !now.Before(h.retryAt)
}

// retry returns when the store may be tried again, if it is down.
func (h *health) retry() (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.retryAt, h.down
}

// failed notes a failed write at now; first reports whether the store was
// up until then.
func (h *health) failed(now time.Time) (first bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	first = !h.down
	h.down, h.retryAt = true, now.Add(h.backoff)
	h.backoff = min(2*h.backoff, h.max)
	return first
}

// succeeded notes a write that worked; recovered reports whether the
// store was down.
func (h *health) succeeded() (recovered bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	recovered = h.down
	h.down, h.backoff = false, h.min
	return recovered
}

func (r *Recorder) storeFailed(err error) {
	r.count(&r.stats.StoreErrors, "store-error", 1)
	if r.health.failed(time.Now()) {
		r.log.Warn("decision store unavailable; journaling records and retrying", "error", err)
	}
}

func (r *Recorder) storeOK() {
	if r.health.succeeded() {
		r.log.Info("decision store available again")
	}
}

// The writer moves the journal to the store a file at a time, when the
// file holds replayBytes or replayEvery has passed since the last one: a
// stream of commits then makes few, large transactions and few file
// rotations, which the committer waits for (a rename and a directory
// fsync), while a record is in the store at most about replayEvery after
// its commit.
const (
	replayEvery = 100 * time.Millisecond
	replayBytes = 256 << 10
)

// run is the writer: it stores what is queued and what the journal
// holds, a journal file at a time so that neither waits long for the
// other.
func (r *Recorder) run() {
	defer close(r.writerDone)
	batch := make([]entry, 0, r.maxBatch)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var lastReplay time.Time // zero: a journal left by an earlier process is stored at once
	for {
		var (
			wakeAt time.Time
			more   bool // the journal has more to store now
		)
		// What the admission path spilled is made durable here, one
		// fsync for all the spills since the last, off their goroutines.
		if err := r.journal.syncSpilled(); err != nil {
			r.log.Error("decision journal: fsync of spilled records failed", "error", err)
		}
		now := time.Now()
		if r.journal.pending() {
			retryAt, down := r.health.retry()
			next := lastReplay.Add(replayEvery)
			switch {
			case down && now.Before(retryAt):
				wakeAt = retryAt
			case !r.journal.replaying() && r.journal.bytes() < replayBytes && now.Before(next):
				wakeAt = next
			default:
				lastReplay = now
				if err := r.replay(); err != nil {
					r.storeFailed(err)
					wakeAt, _ = r.health.retry()
				} else {
					r.storeOK()
					more = r.journal.replaying() || r.journal.bytes() >= replayBytes
					wakeAt = now.Add(replayEvery)
				}
			}
		}
		if more {
			// Take what is queued meanwhile, if anything, then go on.
			select {
			case e := <-r.queue:
				batch = r.take(append(batch[:0], e))
				r.storeEntries(batch)
			case <-r.stop:
				r.finish(batch)
				return
			default:
			}
			continue
		}
		var wake <-chan time.Time
		if !wakeAt.IsZero() && r.journal.pending() {
			timer.Reset(time.Until(wakeAt))
			wake = timer.C
		}
		select {
		case e := <-r.queue:
			batch = r.take(append(batch[:0], e))
			r.storeEntries(batch)
		case <-wake:
		case <-r.kick:
		case <-r.stop:
			r.finish(batch)
			return
		}
		if wake != nil && !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// finish stores or journals what is queued at Close, then tries once to
// store what the journal holds, so that a clean stop leaves the store
// complete when it can.
func (r *Recorder) finish(batch []entry) {
	<-r.committerDone // its last groups are in the journal
	for {
		batch = r.take(batch[:0])
		if len(batch) == 0 {
			break
		}
		r.storeEntries(batch)
	}
	for range 2 { // the file being replayed, then the journal
		if !r.journal.pending() || !r.health.usable(time.Now()) {
			return
		}
		if err := r.replay(); err != nil {
			r.storeFailed(err)
			return
		}
	}
}

// take adds what else is queued, up to maxBatch, to batch.
func (r *Recorder) take(batch []entry) []entry {
	for len(batch) < r.maxBatch {
		select {
		case e := <-r.queue:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

// storeEntries stores a batch from the queue in one transaction, or
// journals it when the store is down or fails.
func (r *Recorder) storeEntries(batch []entry) {
	ds := make([]evidence.Decision, len(batch))
	for i := range batch {
		ds[i] = batch[i].decision()
	}
	if !r.health.usable(time.Now()) {
		r.journalAll(ds)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.writeTimeout)
	kept, err := r.write(ctx, ds, nil)
	cancel()
	if err == nil {
		r.storeOK()
		return
	}
	r.storeFailed(err)
	r.journalAll(pick(ds, kept))
}

// write stores ds in one transaction. A decision the store refuses as
// invalid is dropped, logged and counted (refused is told its index in
// ds, when not nil) and the rest is written again, as no retry can store
// it. It returns the indexes in ds of the decisions not refused, and nil
// or the error of the last write.
func (r *Recorder) write(ctx context.Context, ds []evidence.Decision, refused func(i int, err error)) ([]int, error) {
	kept := make([]int, len(ds))
	for i := range kept {
		kept[i] = i
	}
	for len(kept) > 0 {
		err := r.store.AddDecisions(ctx, pick(ds, kept))
		var inv *evidence.InvalidError
		if err == nil {
			r.count(&r.stats.Stored, "stored", len(kept))
			return kept, nil
		}
		if !errors.As(err, &inv) || inv.Index < 0 || inv.Index >= len(kept) {
			return kept, err
		}
		i := kept[inv.Index]
		r.count(&r.stats.Dropped, "dropped", 1)
		r.log.Error("decision record refused by the store", "uid", ds[i].ID, "error", err)
		if refused != nil {
			refused(i, err)
		}
		kept = slices.Delete(kept, inv.Index, inv.Index+1)
	}
	return kept, nil
}

// pick returns the elements of ds at the indexes in idx.
func pick(ds []evidence.Decision, idx []int) []evidence.Decision {
	if len(idx) == len(ds) {
		return ds
	}
	out := make([]evidence.Decision, len(idx))
	for j, i := range idx {
		out[j] = ds[i]
	}
	return out
}

func (r *Recorder) journalAll(ds []evidence.Decision) {
	if len(ds) == 0 {
		return
	}
	if err := r.journal.append(ds...); err != nil {
		r.count(&r.stats.Dropped, "dropped", len(ds))
		r.log.Error("decision records lost: journal failed", "records", len(ds), "error", err)
		return
	}
	r.count(&r.stats.Journaled, "journaled", len(ds))
	r.kickWriter()
}

// commitLoop is the committer: it writes the waiting records in groups
// until Close, then what is left.
func (r *Recorder) commitLoop() {
	defer close(r.committerDone)
	group := make([]*waiter, 0, r.maxBatch)
	for {
		select {
		case w := <-r.pending:
			r.commit(r.gather(append(group[:0], w)))
		case <-r.stop:
			for {
				group = r.gather(group[:0])
				if len(group) == 0 {
					return
				}
				r.commit(group)
			}
		}
	}
}

// gather adds the records waiting, up to maxBatch, to group.
func (r *Recorder) gather(group []*waiter) []*waiter {
	for len(group) < r.maxBatch {
		select {
		case w := <-r.pending:
			group = append(group, w)
		default:
			return group
		}
	}
	return group
}

// commit makes a group durable and releases its callers: store first,
// one transaction within the group's budget, else one journal append
// (one fsync) or, with WithJournalFirst, the other way round.
func (r *Recorder) commit(group []*waiter) {
	ds := make([]evidence.Decision, len(group))
	errs := make([]error, len(group))
	for i, w := range group {
		ds[i] = w.d
	}
	defer func() {
		for i, w := range group {
			w.done <- errs[i]
		}
	}()
	r.count(&r.stats.Groups, "", 1)
	notRecorded := func(kept []int, err error) {
		r.log.Error("decision records not recorded: journal and store failed", "records", len(kept), "error", err)
		for _, i := range kept {
			errs[i] = &NotRecordedError{ID: ds[i].ID, Err: err}
		}
	}
	if r.journalFirst {
		jerr := r.journal.append(ds...)
		if jerr == nil {
			r.count(&r.stats.Journaled, "journaled", len(ds))
			r.kickWriter()
			return
		}
		if kept, serr := r.commitToStore(group, ds, errs); serr != nil {
			notRecorded(kept, fmt.Errorf("journal: %w; store: %w", jerr, serr))
		}
		return
	}
	kept, serr := r.commitToStore(group, ds, errs)
	if serr == nil {
		return
	}
	if jerr := r.journal.append(pick(ds, kept)...); jerr != nil {
		notRecorded(kept, fmt.Errorf("store: %w; journal: %w", serr, jerr))
		return
	}
	r.count(&r.stats.Journaled, "journaled", len(kept))
	r.kickWriter()
}

// errStoreDown is why a write was not tried: the store failed recently.
var errStoreDown = errors.New("decision store unavailable")

// commitToStore writes a group in one transaction within its budget. A
// record the store refuses gets its error in errs. It returns the indexes
// in ds of the records not refused, and nil or why they are not stored.
func (r *Recorder) commitToStore(group []*waiter, ds []evidence.Decision, errs []error) ([]int, error) {
	now := time.Now()
	kept := make([]int, len(ds))
	for i := range kept {
		kept[i] = i
	}
	if !r.health.usable(now) {
		return kept, errStoreDown
	}
	budget := r.budget(group, now)
	if budget <= 0 {
		return kept, context.DeadlineExceeded
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	kept, err := r.write(ctx, ds, func(i int, err error) { errs[i] = &NotRecordedError{ID: ds[i].ID, Err: err} })
	if err != nil {
		r.storeFailed(err)
		return kept, err
	}
	r.storeOK()
	return kept, nil
}

// budget is how long a group commit may wait for the store: half the
// time its most pressed caller has left (the journal gets the other
// half), at most the write timeout.
func (r *Recorder) budget(group []*waiter, now time.Time) time.Duration {
	b := r.writeTimeout
	for _, w := range group {
		if !w.deadline.IsZero() {
			b = min(b, w.deadline.Sub(now)/2)
		}
	}
	return b
}

// replay stores a file of the journal (the one an earlier attempt left,
// else the journal itself) in transactions of up to maxBatch records,
// and removes it once all of it is stored.
func (r *Recorder) replay() error {
	path, err := r.journal.take()
	if err != nil {
		return fmt.Errorf("decision journal: %w", err)
	}
	if path == "" {
		return nil
	}
	n := 0
	batch := make([]evidence.Decision, 0, r.maxBatch)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.writeTimeout)
		kept, err := r.write(ctx, batch, nil)
		cancel()
		if err != nil {
			return err
		}
		n += len(kept)
		batch = batch[:0]
		return nil
	}
	bad, err := readJournal(path, func(d evidence.Decision) error {
		batch = append(batch, d)
		if len(batch) < r.maxBatch {
			return nil
		}
		return flush()
	})
	if err == nil {
		err = flush()
	}
	r.count(&r.stats.Replayed, "replayed", n)
	if bad > 0 {
		r.count(&r.stats.Dropped, "dropped", bad)
		r.log.Error("unreadable decision journal lines skipped", "path", path, "lines", bad)
	}
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("decision journal: %w", err)
	}
	return nil
}
