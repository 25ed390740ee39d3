package records

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policy"
)

var t0 = time.Date(2026, 11, 26, 21, 5, 25, 0, time.UTC)

// decided is alice's admission uid (operation op) of w, with verdict v.
func decided(uid, op string, w engine.Workload, v policy.Verdict) decision.Decision {
	return decision.Decision{
		ID: uid, Source: decision.Admission, Operation: op,
		User: "alice", Groups: []string{"dev", "system:authenticated"},
		Workload: w, Verdict: v,
	}
}

// at is d made at t.
func at(d decision.Decision, t time.Time) decision.Decision {
	d.Time = t
	return d
}

func workload() engine.Workload {
	return engine.Workload{Namespace: "shop", Kind: "Pod", Name: "hotfix", Operation: "CREATE"}
}

func denyVerdict(mode policy.Mode) policy.Verdict {
	v := policy.Verdict{
		Mode: mode, Outcome: policy.OutcomeDeny, Allowed: mode != policy.ModeEnforce,
		Images: []policy.ImageVerdict{{
			Container: "hotfix", Image: "registry.example/e2e/hotfix:dev", Digest: "sha256:eaca79",
			Outcome: policy.OutcomeDeny,
			Findings: []policy.Finding{
				{Rule: "fresh-image", Severity: "high", Action: policy.ActionDeny, Message: "image was created 14s before admission",
					Summary: "created 14s before admission, minAge 10m", Evidence: map[string]any{"ageSeconds": 14}},
				{Rule: "unsigned", Severity: "low", Action: policy.ActionIgnore, Summary: "no signature"},
			},
		}, {
			Container: "sidecar", Image: "registry.example/base/proxy:1", Digest: "sha256:0b1c", Outcome: policy.OutcomeAllow,
			Findings:  []policy.Finding{{Rule: "fresh-image", Severity: "high", Action: policy.ActionDeny, Summary: "created 1m ago"}},
			Exception: &policy.ExceptionUse{Name: "proxy-hotfix", Reason: "INC-1", Expires: t0.Add(time.Hour)},
		}},
		Findings: []policy.Finding{{Rule: "outside-release-window", Severity: "medium", Action: policy.ActionWarn, Summary: "outside window"}},
	}
	return v
}

func TestDecision(t *testing.T) {
	got := FromDecision(at(decided("uid-1", "CREATE", workload(), denyVerdict(policy.ModeAudit)), t0))
	images := got.Images
	got.Images = nil
	want := evidence.Decision{
		ID: "uid-1", Time: t0, Operation: "CREATE", Namespace: "shop", Kind: "Pod", Name: "hotfix",
		User: "alice", Groups: []string{"dev", "system:authenticated"}, Mode: "audit", Verdict: "would-deny",
		Rules: []string{"fresh-image", "outside-release-window"}, Exceptions: []string{"proxy-hotfix"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("FromDecision (-want +got):\n%s", diff)
	}
	var elems []map[string]any
	if err := json.Unmarshal(images, &elems); err != nil {
		t.Fatalf("Images %s: %v", images, err)
	}
	if len(elems) != 3 || elems[0]["digest"] != "sha256:eaca79" || elems[2]["scope"] != ScopeWorkload {
		t.Errorf("Images = %s, want 2 images then the workload's findings", images)
	}
	if ev := elems[0]["findings"].([]any)[0].(map[string]any)["evidence"]; ev == nil {
		t.Errorf("Images lost the findings' evidence: %s", images)
	}
	for _, tc := range []struct {
		v    policy.Verdict
		want string
	}{
		{denyVerdict(policy.ModeEnforce), "deny"},
		{denyVerdict(policy.ModeWarn), "would-deny"},
		{policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeWarn, Allowed: true}, "warn"},
		{policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeAllow, Allowed: true}, "allow"},
	} {
		if got := Verdict(tc.v); got != tc.want {
			t.Errorf("Verdict(%s/%s) = %q, want %q", tc.v.Mode, tc.v.Outcome, got, tc.want)
		}
	}
}

func TestDecisionSanitizes(t *testing.T) {
	v := denyVerdict(policy.ModeEnforce)
	v.Images[0].Findings[0].Message = "nul \x00 here"
	d0 := at(decided("uid-2", "CREATE", workload(), v), t0)
	d0.User = "bad\x00user\xff"
	e := entry{d: header(d0), v: v, hasVerdict: true}
	d := e.decision()
	st := openStore(t)
	if err := st.AddDecision(t.Context(), d); err != nil {
		t.Fatalf("AddDecision(sanitized) = %v, want nil", err)
	}
}

func openStore(t testing.TB) *evidence.SQLite {
	t.Helper()
	st, err := evidence.OpenSQLite(context.Background(), filepath.Join(t.TempDir(), "evidence.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func record(i int) evidence.Decision {
	return FromDecision(at(decided(fmt.Sprintf("uid-%04d", i), "CREATE", workload(), denyVerdict(policy.ModeEnforce)), t0.Add(time.Duration(i)*time.Second)))
}

// storedIDs returns how many of the first n records the store has.
func storedIDs(t *testing.T, st evidence.Store, n int) int {
	t.Helper()
	found := 0
	for i := range n {
		_, err := st.Decision(t.Context(), fmt.Sprintf("uid-%04d", i))
		switch {
		case err == nil:
			found++
		case !errors.Is(err, evidence.ErrNotFound):
			t.Fatalf("Decision: %v", err)
		}
	}
	return found
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRecorderStores(t *testing.T) {
	st := openStore(t)
	r, err := New(st, filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	const n = 200
	for i := range n {
		r.Record(record(i))
	}
	r.Decided(t.Context(), decided("uid-0000", "CREATE", workload(), denyVerdict(policy.ModeEnforce))) // a repeat
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if got := storedIDs(t, st, n); got != n {
		t.Errorf("stored %d of %d records", got, n)
	}
	ds, err := st.Decisions(t.Context(), evidence.DecisionQuery{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != n {
		t.Errorf("Decisions returned %d records, want %d (one per ID)", len(ds), n)
	}
	if s := r.Stats(); s.Dropped.Load() != 0 || s.StoreErrors.Load() != 0 {
		t.Errorf("Stats: dropped %d, store errors %d, want 0", s.Dropped.Load(), s.StoreErrors.Load())
	}
}

// switchStore is a store that can be taken down.
type switchStore struct {
	evidence.Store
	down  atomic.Bool
	tries atomic.Int64
}

var errDown = errors.New("connection refused")

func (s *switchStore) AddDecision(ctx context.Context, d evidence.Decision) error {
	return s.AddDecisions(ctx, []evidence.Decision{d})
}

func (s *switchStore) AddDecisions(ctx context.Context, ds []evidence.Decision) error {
	s.tries.Add(1)
	if s.down.Load() {
		return &evidence.Error{Backend: "test", Op: "AddDecisions", Err: errDown}
	}
	return s.Store.AddDecisions(ctx, ds)
}

func TestRecorderRetriesWhenStoreDown(t *testing.T) {
	st := &switchStore{Store: openStore(t)}
	st.down.Store(true)
	dir := t.TempDir()
	r, err := New(st, filepath.Join(dir, "journal"), WithBackoff(5*time.Millisecond, 20*time.Millisecond),
		WithRegisterer(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const n = 100
	for i := range n {
		r.Record(record(i))
	}
	waitFor(t, "records journaled", func() bool { return r.Stats().Journaled.Load() == n })
	// A record is a few hundred bytes of JSON.
	if got := testutil.ToFloat64(r.journaled); got < n*100 {
		t.Errorf("buildguard_decision_journal_bytes = %v with %d records journaled, want at least %d", got, n, n*100)
	}
	waitFor(t, "retries", func() bool { return r.Stats().StoreErrors.Load() >= 3 })
	tries := st.tries.Load()
	time.Sleep(50 * time.Millisecond)
	if got := st.tries.Load() - tries; got > 10 {
		t.Errorf("%d writes in 50ms to a store that is down, want backoff", got)
	}
	st.down.Store(false)
	waitFor(t, "records stored", func() bool { return storedIDs(t, st, n) == n })
	if s := r.Stats(); s.Dropped.Load() != 0 || s.Replayed.Load() < n {
		t.Errorf("Stats: dropped %d replayed %d, want 0 and at least %d", s.Dropped.Load(), s.Replayed.Load(), n)
	}
	waitFor(t, "journal emptied", func() bool { return !r.journal.pending() })
	if got := testutil.ToFloat64(r.journaled); got != 0 {
		t.Errorf("buildguard_decision_journal_bytes = %v once the journal was replayed, want 0", got)
	}
}

func TestRecorderReplaysAfterRestart(t *testing.T) {
	dir := t.TempDir()
	dbPath, jPath := filepath.Join(dir, "evidence.db"), filepath.Join(dir, "journal")
	st, err := evidence.OpenSQLite(t.Context(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	st.Close() // the store is down: every write fails
	r, err := New(st, jPath, WithBackoff(time.Millisecond, 5*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	for i := range n {
		r.Record(record(i))
	}
	r.Close()
	if s := r.Stats(); s.Stored.Load() != 0 || s.Dropped.Load() != 0 {
		t.Fatalf("Stats: stored %d dropped %d with a closed store, want 0", s.Stored.Load(), s.Dropped.Load())
	}
	// A torn last line, as a crash in the middle of a write leaves.
	f, err := os.OpenFile(jPath, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"ID":"torn","Ti`)
	f.Close()

	// The next process.
	st2, err := evidence.OpenSQLite(t.Context(), dbPath)
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	r2, err := New(st2, jPath)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "journal replayed", func() bool { return r2.Stats().Replayed.Load() == n })
	r2.Close()
	if got := storedIDs(t, st2, n); got != n {
		t.Errorf("after restart, stored %d of %d records", got, n)
	}
	if got := r2.Stats().Dropped.Load(); got != 1 {
		t.Errorf("Dropped = %d, want 1 (the torn line)", got)
	}
	for _, p := range []string{jPath + ".replay"} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left behind: %v", p, err)
		}
	}
	if fi, err := os.Stat(jPath); err != nil || fi.Size() != 0 {
		t.Errorf("journal after replay: %v, %v; want empty", fi, err)
	}
}

// slowStore blocks writes until released.
type slowStore struct {
	evidence.Store
	release chan struct{}
}

func (s *slowStore) AddDecision(ctx context.Context, d evidence.Decision) error {
	return s.AddDecisions(ctx, []evidence.Decision{d})
}

func (s *slowStore) AddDecisions(ctx context.Context, ds []evidence.Decision) error {
	select {
	case <-s.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Store.AddDecisions(ctx, ds)
}

func TestRecorderSpillsWhenQueueFull(t *testing.T) {
	st := &slowStore{Store: openStore(t), release: make(chan struct{})}
	// The store answers in a minute at the earliest: a Record that waited
	// for it would take that long. (Spills do not wait for an fsync, but
	// a busy disk can make a write slow, so the bound is loose.)
	r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithQueueSize(4), WithWriteTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	start := time.Now()
	for i := range n {
		r.Record(record(i))
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Record blocked for %v on a stuck store", d)
	}
	if got := r.Stats().Spilled.Load(); got == 0 {
		t.Errorf("Spilled = %d, want some", got)
	}
	close(st.release)
	r.Close()
	// What Close could not store is in the journal: a new Recorder stores it.
	r2, err := New(st, r.journal.path)
	if err != nil {
		t.Fatal(err)
	}
	r2.Close()
	if got := storedIDs(t, st, n); got != n {
		t.Errorf("stored %d of %d records", got, n)
	}
	if got := r.Stats().Dropped.Load() + r2.Stats().Dropped.Load(); got != 0 {
		t.Errorf("Dropped = %d, want 0", got)
	}
}

func TestRecorderJournalCap(t *testing.T) {
	st := &switchStore{Store: openStore(t)}
	st.down.Store(true)
	r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithMaxJournalBytes(4096), WithBackoff(time.Hour, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		r.Record(record(i))
	}
	r.Close()
	if s := r.Stats(); s.Dropped.Load() == 0 || s.Journaled.Load()+s.Dropped.Load() != 20 {
		t.Errorf("Stats: journaled %d dropped %d of 20, want some dropped past the cap", s.Journaled.Load(), s.Dropped.Load())
	}
}

// BenchmarkDecided measures what the admission path pays: building the
// record's header and putting it on the queue (a consumer keeps it empty).
func BenchmarkDecided(b *testing.B) {
	j, err := openJournal(filepath.Join(b.TempDir(), "journal"), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer j.close()
	r := &Recorder{queue: make(chan entry, DefaultQueueSize), journal: j, kick: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		for range r.queue {
		}
		close(done)
	}()
	d := decided("uid-b", "CREATE", workload(), denyVerdict(policy.ModeEnforce))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		r.Decided(ctx, d)
	}
	close(r.queue)
	<-done
	b.ReportMetric(float64(r.Stats().Spilled.Load())/float64(b.N), "spilled/op")
}

// BenchmarkSpill measures the slow path when the queue is full: a journal
// append with fsync.
func BenchmarkSpill(b *testing.B) {
	j, err := openJournal(filepath.Join(b.TempDir(), "journal"), 0)
	if err != nil {
		b.Fatal(err)
	}
	defer j.close()
	d := record(1)
	for b.Loop() {
		if err := j.append(d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRecorderSQLite measures the writer: the time per record from
// Decided to stored in SQLite (synchronous=FULL), records arriving
// faster than it stores them, in transactions of up to DefaultMaxBatch.
func BenchmarkRecorderSQLite(b *testing.B) { benchmarkWriter(b, openStore(b)) }

func benchmarkWriter(b *testing.B, st evidence.Store) {
	var seq atomic.Int64
	b.Run("writer", func(b *testing.B) {
		r, err := New(st, filepath.Join(b.TempDir(), "journal"), WithQueueSize(b.N+1))
		if err != nil {
			b.Fatal(err)
		}
		d := decided("", "CREATE", workload(), denyVerdict(policy.ModeEnforce))
		b.ResetTimer()
		for range b.N {
			d.ID = fmt.Sprintf("uid-%d", seq.Add(1))
			r.Decided(context.Background(), d)
		}
		r.Close() // waits for the writer to store everything
		b.StopTimer()
		if got := r.Stats().Stored.Load(); got != int64(b.N) {
			b.Fatalf("stored %d of %d", got, b.N)
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}
