package records

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/testpostgres"
	"buildguard.dev/buildguard/policy"
)

// countingStore counts transactions of decisions.
type countingStore struct {
	evidence.Store
	commits, records atomic.Int64
}

func (s *countingStore) AddDecisions(ctx context.Context, ds []evidence.Decision) error {
	s.commits.Add(1)
	s.records.Add(int64(len(ds)))
	return s.Store.AddDecisions(ctx, ds)
}

// TestCommitIsDurableOnReturn: every Commit that returns nil has its
// record in the store at that moment, and concurrent commits share
// transactions.
func TestCommitIsDurableOnReturn(t *testing.T) {
	st := &countingStore{Store: openStore(t)}
	r, err := New(st, filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const callers, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, callers*each)
	for c := range callers {
		wg.Go(func() {
			for i := range each {
				d := record(c*each + i)
				if err := r.Commit(t.Context(), d); err != nil {
					errs <- fmt.Errorf("Commit(%s) = %v", d.ID, err)
					continue
				}
				if _, err := st.Decision(t.Context(), d.ID); err != nil {
					errs <- fmt.Errorf("after Commit(%s) returned, Decision: %v", d.ID, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s := r.Stats()
	if s.Committed.Load() != callers*each || s.Stored.Load() != callers*each || s.Journaled.Load() != 0 {
		t.Errorf("Stats: committed %d stored %d journaled %d, want %d, %d, 0",
			s.Committed.Load(), s.Stored.Load(), s.Journaled.Load(), callers*each, callers*each)
	}
	if c := st.commits.Load(); c >= callers*each {
		t.Errorf("%d records took %d transactions: no group commit", callers*each, c)
	} else {
		t.Logf("%d records in %d transactions", callers*each, c)
	}
}

// TestCommitJournalsWhenStoreDown: with the store down a commit is
// durable in the journal when it returns, and stored once the store is
// back.
func TestCommitJournalsWhenStoreDown(t *testing.T) {
	st := &switchStore{Store: openStore(t)}
	st.down.Store(true)
	jPath := filepath.Join(t.TempDir(), "journal")
	r, err := New(st, jPath, WithBackoff(5*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const n = 20
	for i := range n {
		if err := r.Commit(t.Context(), record(i)); err != nil {
			t.Fatalf("Commit with the store down = %v, want nil (journaled)", err)
		}
	}
	// In the file, not only in memory: what a crash would leave.
	journaled := map[string]bool{}
	for _, p := range []string{jPath, jPath + ".replay"} {
		readJournal(p, func(d evidence.Decision) error { journaled[d.ID] = true; return nil })
	}
	for i := range n {
		if id := record(i).ID; !journaled[id] {
			t.Errorf("%s not in the journal after Commit returned with the store down", id)
		}
	}
	st.down.Store(false)
	waitFor(t, "journaled commits stored", func() bool { return storedIDs(t, st, n) == n })
	if s := r.Stats(); s.Unrecorded.Load() != 0 || s.Dropped.Load() != 0 || s.Journaled.Load() < n {
		t.Errorf("Stats: unrecorded %d dropped %d journaled %d, want 0, 0, >= %d", s.Unrecorded.Load(), s.Dropped.Load(), s.Journaled.Load(), n)
	}
}

// TestCommitSlowStore: a store that does not commit within half the
// caller's time left is not waited for: the record goes to the journal in
// time, and to the store when it answers again.
func TestCommitSlowStore(t *testing.T) {
	st := &slowStore{Store: openStore(t), release: make(chan struct{})}
	r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithBackoff(time.Millisecond, 5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	if err := r.Commit(ctx, record(1)); err != nil {
		t.Fatalf("Commit to a stuck store = %v, want nil (journaled)", err)
	}
	if d := time.Since(start); d > 1900*time.Millisecond {
		t.Errorf("Commit returned after %v, at its deadline: it should journal after about half", d)
	}
	if r.Stats().Journaled.Load() != 1 {
		t.Errorf("Journaled = %d, want 1", r.Stats().Journaled.Load())
	}
	close(st.release)
	waitFor(t, "the journaled record stored", func() bool { return storedIDs(t, st, 2) == 1 })
}

// TestCommitNotRecorded: when neither the store nor the journal takes a
// record the caller is told, with a *NotRecordedError, and after Close
// too.
func TestCommitNotRecorded(t *testing.T) {
	st := &switchStore{Store: openStore(t)}
	st.down.Store(true)
	r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithMaxJournalBytes(10), WithBackoff(time.Hour, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	err = r.Commit(t.Context(), record(1))
	var nre *NotRecordedError
	if !errors.As(err, &nre) || nre.ID != record(1).ID || !errors.Is(err, errJournalFull) || !errors.Is(err, errDown) {
		t.Errorf("Commit with the store down and the journal full = %v, want a *NotRecordedError for %s naming both causes", err, record(1).ID)
	}

	// A context that ends first.
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := r.Commit(ctx, record(2)); !errors.As(err, &nre) || !errors.Is(err, context.Canceled) {
		t.Errorf("Commit(canceled context) = %v, want a *NotRecordedError with context.Canceled", err)
	}
	r.Close()
	if err := r.Commit(t.Context(), record(3)); !errors.As(err, &nre) || !errors.Is(err, ErrClosed) {
		t.Errorf("Commit after Close = %v, want a *NotRecordedError with ErrClosed", err)
	}
	if got := r.Stats().Unrecorded.Load(); got != 3 {
		t.Errorf("Unrecorded = %d, want 3", got)
	}
}

// TestCommitInvalidRecord: a record the store refuses fails its own
// caller only; the others of its group are stored.
func TestCommitInvalidRecord(t *testing.T) {
	st := openStore(t)
	r, err := New(st, filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var wg sync.WaitGroup
	results := make([]error, 20)
	for i := range results {
		wg.Go(func() {
			d := record(i)
			if i == 7 {
				d.Time = time.Time{} // the store refuses a decision without a time
			}
			results[i] = r.Commit(t.Context(), d)
		})
	}
	wg.Wait()
	for i, err := range results {
		var inv *evidence.InvalidError
		switch {
		case i == 7 && !errors.As(err, &inv):
			t.Errorf("Commit(invalid) = %v, want a *NotRecordedError with an *evidence.InvalidError", err)
		case i != 7 && err != nil:
			t.Errorf("Commit(%d) = %v, want nil", i, err)
		}
	}
	if got := storedIDs(t, st, 20); got != 19 {
		t.Errorf("stored %d of the 19 valid records", got)
	}
}

// TestRecordDecision: a deny and a would-deny are stored when
// RecordDecision returns; an allow is queued.
func TestRecordDecision(t *testing.T) {
	st := &slowStore{Store: openStore(t), release: make(chan struct{})}
	r, err := New(st, filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	allow := policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeAllow, Allowed: true}
	start := time.Now()
	if err := r.RecordDecision(t.Context(), request("uid-allow", "CREATE"), workload(), allow); err != nil {
		t.Fatalf("RecordDecision(allow) = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("RecordDecision(allow) waited %v for a stuck store", d)
	}
	close(st.release)
	for _, mode := range []policy.Mode{policy.ModeEnforce, policy.ModeAudit} {
		uid := "uid-" + string(mode)
		if err := r.RecordDecision(t.Context(), request(uid, "CREATE"), workload(), denyVerdict(mode)); err != nil {
			t.Fatalf("RecordDecision(%s deny) = %v", mode, err)
		}
		d, err := st.Decision(t.Context(), uid)
		if err != nil {
			t.Fatalf("after RecordDecision(%s deny) returned: %v", mode, err)
		}
		if want := Verdict(denyVerdict(mode)); d.Verdict != want || len(d.Images) == 0 {
			t.Errorf("record of the %s deny: verdict %q, images %s; want %q and images", mode, d.Verdict, d.Images, want)
		}
	}
	waitFor(t, "the allow stored", func() bool {
		_, err := st.Decision(t.Context(), "uid-allow")
		return err == nil
	})
}

// BenchmarkCommit measures the deny path's wait for durability: 16
// callers (as many concurrent admissions) commit records as fast as they
// are released, to SQLite, to PostgreSQL, and to the journal alone (the
// store down: what a journal-first design would wait for). It reports
// records/s, the p50 and p99 wait, and records per group commit.
func BenchmarkCommit(b *testing.B) {
	for _, tc := range []struct {
		name string
		open func(b *testing.B) evidence.Store
		down bool
	}{
		{"sqlite", func(b *testing.B) evidence.Store { return openStore(b) }, false},
		{"postgres", openPostgres, false},
		{"journal", func(b *testing.B) evidence.Store { return openStore(b) }, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			st := &countingStore{Store: tc.open(b)}
			var store evidence.Store = st
			if tc.down {
				sw := &switchStore{Store: st}
				sw.down.Store(true)
				store = sw
			}
			r, err := New(store, filepath.Join(b.TempDir(), "journal"), WithBackoff(time.Hour, time.Hour))
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			var seq atomic.Int64
			b.Run("16-callers", func(b *testing.B) {
				var (
					mu   sync.Mutex
					lats []time.Duration
				)
				commits, records := st.commits.Load(), st.records.Load()
				b.SetParallelism(8) // 16 callers on 2 CPUs
				b.RunParallel(func(pb *testing.PB) {
					var mine []time.Duration
					for pb.Next() {
						d := record(int(seq.Add(1)))
						ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
						start := time.Now()
						err := r.Commit(ctx, d)
						mine = append(mine, time.Since(start))
						cancel()
						if err != nil {
							b.Error(err)
							return
						}
					}
					mu.Lock()
					lats = append(lats, mine...)
					mu.Unlock()
				})
				b.StopTimer()
				slices.Sort(lats)
				if len(lats) > 0 {
					b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "p50-µs")
					b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-µs")
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
				if c := st.commits.Load() - commits; c > 0 {
					b.ReportMetric(float64(st.records.Load()-records)/float64(c), "records/commit")
				}
			})
		})
	}
}

func openPostgres(b *testing.B) evidence.Store {
	srv := testpostgres.Start(b)
	st, err := evidence.OpenPostgres(context.Background(), srv.NewDatabase(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}
