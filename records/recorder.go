package records

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policy"
)

// Defaults of a Recorder's options.
const (
	DefaultQueueSize       = 1024
	DefaultMaxJournalBytes = 256 << 20
	DefaultMinBackoff      = 100 * time.Millisecond
	DefaultMaxBackoff      = 30 * time.Second
	DefaultWriteTimeout    = 5 * time.Second
)

// Recorder writes decision records to a store without holding up
// admission. Record and OnDecision only put the record on a bounded
// in-memory queue; one writer goroutine takes them off and stores them.
//
// Nothing is lost when the store is down or slow: when the queue is full,
// Record appends the record to an on-disk journal (JSON lines, fsynced)
// instead; when a write fails, the writer journals the record and
// everything queued after it, and retries the journal with exponential
// backoff; a Recorder opened on a journal left by an earlier process
// replays it. Records are stored at least once; the store keeps one per
// ID. Only a crash loses records, and only those still on the queue.
type Recorder struct {
	store   evidence.Store
	journal *journal
	log     *slog.Logger
	now     func() time.Time

	queue                  chan entry
	minBackoff, maxBackoff time.Duration
	writeTimeout           time.Duration

	kick      chan struct{} // the journal has new records
	stop      chan struct{}
	done      chan struct{}
	closeOnce sync.Once
	closed    atomic.Bool

	stats   Stats
	counter *prometheus.CounterVec
	queued  prometheus.GaugeFunc
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

// Stats counts what a Recorder did with records since it was created.
type Stats struct {
	// Stored is records written to the store, from the queue or the journal.
	Stored atomic.Int64
	// Spilled is records Record journaled because the queue was full.
	Spilled atomic.Int64
	// Journaled is records the writer journaled because the store failed.
	Journaled atomic.Int64
	// Replayed is journaled records stored when the journal was replayed
	// (also counted in Stored).
	Replayed atomic.Int64
	// Dropped is records lost: refused by the store as invalid, unreadable
	// journal lines, or a full or failing journal.
	Dropped atomic.Int64
	// StoreErrors is failed store writes.
	StoreErrors atomic.Int64
}

// Option configures a Recorder.
type Option func(*Recorder)

// WithQueueSize sets how many records wait in memory for the writer. The
// default is DefaultQueueSize.
func WithQueueSize(n int) Option {
	return func(r *Recorder) {
		if n > 0 {
			r.queue = make(chan entry, n)
		}
	}
}

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
			r.minBackoff = min
		}
		if max >= r.minBackoff {
			r.maxBackoff = max
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

// WithClock sets the time source for records' times. The default is
// time.Now.
func WithClock(now func() time.Time) Option { return func(r *Recorder) { r.now = now } }

// WithRegisterer registers the Recorder's metrics on reg:
// buildguard_decision_records_total{result} (stored, spilled, journaled,
// replayed, dropped, store-error) and buildguard_decision_records_queued.
// The default registers none.
func WithRegisterer(reg prometheus.Registerer) Option {
	return func(r *Recorder) {
		r.counter = prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_decision_records_total",
			Help: "Decision records by what became of them: stored, spilled (queue full, journaled by the admission path), journaled (store failed), replayed (from the journal), dropped, store-error (failed writes).",
		}, []string{"result"})
		r.queued = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "buildguard_decision_records_queued",
			Help: "Decision records waiting in memory for the store.",
		}, func() float64 { return float64(len(r.queue)) })
		reg.MustRegister(r.counter, r.queued)
	}
}

// New returns a Recorder storing to store, with its journal at
// journalPath (created if need be, on a volume that outlives the process),
// and starts its writer, which first replays what the journal holds.
// Close stops it.
func New(store evidence.Store, journalPath string, opts ...Option) (*Recorder, error) {
	if journalPath == "" {
		return nil, errors.New("decision journal: empty path")
	}
	j, err := openJournal(journalPath, DefaultMaxJournalBytes)
	if err != nil {
		return nil, err
	}
	r := &Recorder{
		store: store, journal: j, log: slog.New(slog.DiscardHandler), now: time.Now,
		queue:      make(chan entry, DefaultQueueSize),
		minBackoff: DefaultMinBackoff, maxBackoff: DefaultMaxBackoff, writeTimeout: DefaultWriteTimeout,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	for _, o := range opts {
		o(r)
	}
	go r.run()
	return r, nil
}

// OnDecision records a webhook decision; it has the signature of
// webhook.Handler.OnDecision and never blocks on the store.
func (r *Recorder) OnDecision(_ context.Context, req *admissionv1.AdmissionRequest, w engine.Workload, v policy.Verdict) {
	r.enqueue(entry{d: header(req, w, v, r.now()), v: v, hasVerdict: true})
}

// Record records d. It never waits for the store: d goes on the queue or,
// when the queue is full, into the journal.
func (r *Recorder) Record(d evidence.Decision) { r.enqueue(entry{d: d}) }

func (r *Recorder) enqueue(e entry) {
	if r.closed.Load() {
		r.count(&r.stats.Dropped, "dropped", 1)
		return
	}
	select {
	case r.queue <- e:
		return
	default:
	}
	r.count(&r.stats.Spilled, "spilled", 1)
	if err := r.journal.append(e.decision()); err != nil {
		r.count(&r.stats.Dropped, "dropped", 1)
		r.log.Error("decision record lost: queue and journal full", "uid", e.d.ID, "error", err)
		return
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Stats returns the Recorder's counters.
func (r *Recorder) Stats() *Stats { return &r.stats }

// Close stops the writer: records still queued are stored, or journaled
// if the store fails or does not answer within the write timeout, for the
// next Recorder on the journal to replay. Call it after the last Record:
// records given after Close are dropped and counted. It does not close
// the store.
func (r *Recorder) Close() error {
	r.closeOnce.Do(func() {
		r.closed.Store(true)
		close(r.stop)
	})
	<-r.done
	return nil
}

func (r *Recorder) count(c *atomic.Int64, result string, n int) {
	c.Add(int64(n))
	if r.counter != nil {
		r.counter.WithLabelValues(result).Add(float64(n))
	}
}

// batchSize bounds how many queued records the writer takes at once.
const batchSize = 256

func (r *Recorder) run() {
	defer close(r.done)
	var (
		down    bool // the last write failed; journal until retryAt
		retryAt time.Time
		backoff = r.minBackoff
		batch   = make([]entry, 0, batchSize)
		timer   = time.NewTimer(time.Hour)
	)
	timer.Stop()
	failed := func(err error) {
		r.count(&r.stats.StoreErrors, "store-error", 1)
		if !down {
			r.log.Warn("decision store unavailable; journaling records and retrying", "error", err)
		}
		down, retryAt = true, time.Now().Add(backoff)
		backoff = min(2*backoff, r.maxBackoff)
	}
	for {
		if (!down || !time.Now().Before(retryAt)) && r.journal.pending() {
			if err := r.replay(); err != nil {
				failed(err)
			} else {
				if down {
					r.log.Info("decision store available again")
				}
				down, backoff = false, r.minBackoff
			}
		}
		var wake <-chan time.Time
		if down {
			timer.Reset(time.Until(retryAt))
			wake = timer.C
		}
		select {
		case e := <-r.queue:
			batch = r.take(append(batch[:0], e))
			if down {
				r.journalAll(batch)
				break
			}
			for i := range batch {
				if err := r.add(batch[i].decision()); err != nil {
					failed(err)
					r.journalAll(batch[i:])
					break
				}
			}
		case <-wake:
		case <-r.kick:
		case <-r.stop:
			r.drain(down)
			r.journal.close()
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

// take adds what else is queued, up to batchSize, to batch.
func (r *Recorder) take(batch []entry) []entry {
	for len(batch) < batchSize {
		select {
		case e := <-r.queue:
			batch = append(batch, e)
		default:
			return batch
		}
	}
	return batch
}

// drain stores or journals what is queued at Close.
func (r *Recorder) drain(down bool) {
	for {
		batch := r.take(nil)
		if len(batch) == 0 {
			return
		}
		for i := range batch {
			if down {
				r.journalAll(batch[i:])
				break
			}
			if err := r.add(batch[i].decision()); err != nil {
				r.count(&r.stats.StoreErrors, "store-error", 1)
				down = true
				r.journalAll(batch[i:])
				break
			}
		}
	}
}

// add stores d. An error means try again later; a record the store
// refuses as invalid is dropped, as no retry can store it.
func (r *Recorder) add(d evidence.Decision) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.writeTimeout)
	defer cancel()
	err := r.store.AddDecision(ctx, d)
	var inv *evidence.InvalidError
	switch {
	case err == nil:
		r.count(&r.stats.Stored, "stored", 1)
		return nil
	case errors.As(err, &inv):
		r.count(&r.stats.Dropped, "dropped", 1)
		r.log.Error("decision record refused by the store", "uid", d.ID, "error", err)
		return nil
	}
	return err
}

func (r *Recorder) journalAll(es []entry) {
	ds := make([]evidence.Decision, len(es))
	for i := range es {
		ds[i] = es[i].decision()
	}
	if err := r.journal.append(ds...); err != nil {
		r.count(&r.stats.Dropped, "dropped", len(ds))
		r.log.Error("decision records lost: journal failed", "records", len(ds), "error", err)
		return
	}
	r.count(&r.stats.Journaled, "journaled", len(ds))
}

// replay stores what the journal holds, file by file; a file is removed
// once all of it is stored.
func (r *Recorder) replay() error {
	for {
		path, err := r.journal.take()
		if err != nil {
			return fmt.Errorf("decision journal: %w", err)
		}
		if path == "" {
			return nil
		}
		n := 0
		bad, err := readJournal(path, func(d evidence.Decision) error {
			if err := r.add(d); err != nil {
				return err
			}
			n++
			return nil
		})
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
		r.log.Info("decision journal replayed", "records", n)
	}
}
