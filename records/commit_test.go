package records

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
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

// durable reports whether the record id is on disk: in the journal (a
// crash leaves it there for the next process) or in the store. The files
// are read in the order the writer moves records, so that a record on
// its way is not missed.
func durable(t *testing.T, r *Recorder, st evidence.Store, id string) bool {
	t.Helper()
	for _, p := range []string{r.journal.path, r.journal.replayPath()} {
		b, _ := os.ReadFile(p)
		if bytes.Contains(b, []byte(`{"ID":"`+id+`"`)) {
			return true
		}
	}
	_, err := st.Decision(t.Context(), id)
	return err == nil
}

// TestCommitIsDurableOnReturn: every Commit that returns nil has its
// record on disk at that moment (store first: in the store), concurrent
// commits share a transaction or an fsync, and the records reach the
// store.
func TestCommitIsDurableOnReturn(t *testing.T) {
	for _, journalFirst := range []bool{false, true} {
		t.Run(fmt.Sprint("journal-first=", journalFirst), func(t *testing.T) {
			st := openStore(t)
			r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithJournalFirst(journalFirst))
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
						if journalFirst && !durable(t, r, st, d.ID) {
							errs <- fmt.Errorf("after Commit(%s) returned, the record is neither in the journal nor in the store", d.ID)
						}
						if _, err := st.Decision(t.Context(), d.ID); !journalFirst && err != nil {
							errs <- fmt.Errorf("after Commit(%s) returned, the record is not in the store: %v", d.ID, err)
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			waitFor(t, "every record stored", func() bool { return storedIDs(t, st, callers*each) == callers*each })
			s := r.Stats()
			wantJournaled := int64(0)
			if journalFirst {
				wantJournaled = callers * each
			}
			if s.Committed.Load() != callers*each || s.Journaled.Load() != wantJournaled || s.Unrecorded.Load() != 0 {
				t.Errorf("Stats: committed %d journaled %d unrecorded %d, want %d, %d, 0",
					s.Committed.Load(), s.Journaled.Load(), s.Unrecorded.Load(), callers*each, wantJournaled)
			}
			if g := s.Groups.Load(); g >= callers*each {
				t.Errorf("%d records took %d group commits: no grouping", callers*each, g)
			} else {
				t.Logf("%d records in %d group commits", callers*each, g)
			}
		})
	}
}

// TestCommitJournalsWhenStoreDown: with the store down a commit is
// durable in the journal when it returns, and stored once the store is
// back.
func TestCommitJournalsWhenStoreDown(t *testing.T) {
	st := &switchStore{Store: openStore(t)}
	st.down.Store(true)
	r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithBackoff(5*time.Millisecond, 20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const n = 20
	for i := range n {
		if err := r.Commit(t.Context(), record(i)); err != nil {
			t.Fatalf("Commit with the store down = %v, want nil (journaled)", err)
		}
		if id := record(i).ID; !durable(t, r, st.Store, id) {
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
// time, and to the store when it answers again. With the journal first,
// a stuck store is not waited for at all.
func TestCommitSlowStore(t *testing.T) {
	for _, journalFirst := range []bool{false, true} {
		t.Run(fmt.Sprint("journal-first=", journalFirst), func(t *testing.T) {
			st := &slowStore{Store: openStore(t), release: make(chan struct{})}
			r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithJournalFirst(journalFirst),
				WithBackoff(time.Millisecond, 5*time.Millisecond))
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
			if !durable(t, r, st.Store, record(1).ID) {
				t.Errorf("the record is not in the journal")
			}
			close(st.release)
			waitFor(t, "the journaled record stored", func() bool { return storedIDs(t, st, 2) == 1 })
		})
	}
}

// TestCommitJournalFails: when the journal cannot take a group, the
// store does, within half the time the callers have left; when it does
// not answer in that time either, the callers are told.
func TestCommitJournalFails(t *testing.T) {
	st := &slowStore{Store: openStore(t), release: make(chan struct{})}
	r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithJournalFirst(true), WithMaxJournalBytes(10),
		WithBackoff(time.Millisecond, 5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 600*time.Millisecond)
	defer cancel()
	err = r.Commit(ctx, record(1))
	var nre *NotRecordedError
	if !errors.As(err, &nre) || !errors.Is(err, errJournalFull) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Commit with the journal full and the store stuck = %v, want a *NotRecordedError naming both", err)
	}
	close(st.release)
	time.Sleep(10 * time.Millisecond) // past the backoff
	if err := r.Commit(t.Context(), record(2)); err != nil {
		t.Fatalf("Commit with the journal full and the store up = %v, want nil", err)
	}
	if _, err := st.Decision(t.Context(), record(2).ID); err != nil {
		t.Errorf("after Commit returned with the journal full, the record is not in the store: %v", err)
	}
}

// TestCommitNotRecorded: when neither the journal nor the store takes a
// record the caller is told, with a *NotRecordedError; also for a context
// that has ended and after Close.
func TestCommitNotRecorded(t *testing.T) {
	for _, journalFirst := range []bool{false, true} {
		t.Run(fmt.Sprint("journal-first=", journalFirst), func(t *testing.T) {
			st := &switchStore{Store: openStore(t)}
			st.down.Store(true)
			r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithJournalFirst(journalFirst), WithMaxJournalBytes(10),
				WithBackoff(time.Millisecond, time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			err = r.Commit(t.Context(), record(1))
			var nre *NotRecordedError
			if !errors.As(err, &nre) || nre.ID != record(1).ID || !errors.Is(err, errJournalFull) || !errors.Is(err, errDown) {
				t.Errorf("Commit with the store down and the journal full = %v, want a *NotRecordedError for %s naming both causes", err, record(1).ID)
			}
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
		})
	}
}

// TestCommitInvalidRecord: a record the store would refuse is refused
// before it is acknowledged, not dropped once it is replayed.
func TestCommitInvalidRecord(t *testing.T) {
	st := openStore(t)
	r, err := New(st, filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, tc := range []struct {
		field string
		edit  func(*evidence.Decision)
	}{
		{"ID", func(d *evidence.Decision) { d.ID = "" }},
		{"Time", func(d *evidence.Decision) { d.Time = time.Time{} }},
		{"Images", func(d *evidence.Decision) { d.Images = []byte(`[{"image":`) }},
		{"Images", func(d *evidence.Decision) { d.Images = []byte(`["\u0000"]`) }},
	} {
		d := record(1)
		tc.edit(&d)
		err := r.Commit(t.Context(), d)
		var inv *evidence.InvalidError
		if !errors.As(err, &inv) || inv.Field != tc.field {
			t.Errorf("Commit(bad %s) = %v, want a *NotRecordedError with an *evidence.InvalidError for %s", tc.field, err, tc.field)
		}
	}
	if err := r.Commit(t.Context(), record(2)); err != nil {
		t.Errorf("Commit(valid) = %v", err)
	}
}

// TestRecordDecision: a deny and a would-deny are on disk when
// RecordDecision returns (the store is stuck: in the journal); an allow
// is queued.
func TestRecordDecision(t *testing.T) {
	st := &slowStore{Store: openStore(t), release: make(chan struct{})}
	r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithWriteTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	allow := policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeAllow, Allowed: true}
	start := time.Now()
	if err := r.RecordDecision(t.Context(), decided("uid-allow", "CREATE", workload(), allow)); err != nil {
		t.Fatalf("RecordDecision(allow) = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("RecordDecision(allow) waited %v for a stuck store", d)
	}
	for _, mode := range []policy.Mode{policy.ModeEnforce, policy.ModeAudit} {
		uid := "uid-" + string(mode)
		if err := r.RecordDecision(t.Context(), decided(uid, "CREATE", workload(), denyVerdict(mode))); err != nil {
			t.Fatalf("RecordDecision(%s deny) = %v", mode, err)
		}
		if !durable(t, r, st.Store, uid) {
			t.Errorf("after RecordDecision(%s deny) returned, its record is not on disk", mode)
		}
	}
	close(st.release)
	for _, uid := range []string{"uid-allow", "uid-enforce", "uid-audit"} {
		waitFor(t, uid+" stored", func() bool {
			_, err := st.Decision(t.Context(), uid)
			return err == nil
		})
	}
	d, err := st.Decision(t.Context(), "uid-audit")
	if want := Verdict(denyVerdict(policy.ModeAudit)); err != nil || d.Verdict != want || len(d.Images) == 0 {
		t.Errorf("record of the audit-mode deny: %+v, %v; want verdict %q and images", d, err, want)
	}
}

// BenchmarkCommit measures the deny path's wait for durability: 16
// callers (as many concurrent admissions) commit records as fast as they
// are released. store-first/* is the Recorder's default: group commits
// to the store; journal-first/* is WithJournalFirst: group commits to the
// journal while the writer moves the journal to the store; journal-only
// has the store down, so that nothing competes with the journal. It
// reports records/s, the p50 and p99 wait, and records per group commit.
func BenchmarkCommit(b *testing.B) {
	sqlite := func(b *testing.B) evidence.Store { return openStore(b) }
	for _, tc := range []struct {
		name         string
		open         func(b *testing.B) evidence.Store
		journalFirst bool
		down         bool
	}{
		{"store-first/sqlite", sqlite, false, false},
		{"journal-first/sqlite", sqlite, true, false},
		{"store-first/postgres", openPostgres, false, false},
		{"journal-first/postgres", openPostgres, true, false},
		{"journal-only", sqlite, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var store evidence.Store = tc.open(b)
			if tc.down {
				sw := &switchStore{Store: store}
				sw.down.Store(true)
				store = sw
			}
			r, err := New(store, filepath.Join(b.TempDir(), "journal"), WithJournalFirst(tc.journalFirst), WithBackoff(time.Hour, time.Hour))
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
				groups, committed := r.Stats().Groups.Load(), r.Stats().Committed.Load()
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
					b.ReportMetric(float64(lats[(len(lats)*99+99)/100-1].Microseconds()), "p99-µs")
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
				if g := r.Stats().Groups.Load() - groups; g > 0 {
					b.ReportMetric(float64(r.Stats().Committed.Load()-committed)/float64(g), "records/commit")
				}
			})
		})
	}
}

// BenchmarkRecorderPostgres is BenchmarkRecorderSQLite with PostgreSQL.
func BenchmarkRecorderPostgres(b *testing.B) { benchmarkWriter(b, openPostgres(b)) }

func openPostgres(b *testing.B) evidence.Store {
	srv := testpostgres.Start(b)
	st, err := evidence.OpenPostgres(context.Background(), srv.NewDatabase(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st
}
