package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/syncbuffer"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"buildguard.dev/buildguard/audit/audittest"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/testclock"
)

var scheduleNow = audittest.Now()

func TestScheduleScan(t *testing.T) {
	cs, e := audittest.Cluster(t)
	store, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "evidence.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	reg := prometheus.NewRegistry()
	m, err := NewScheduleMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	clock := testclock.New(scheduleNow)
	s := &Scanner{Client: cs, Evaluator: e, Recorder: store, Now: clock.Now}
	every := 6 * time.Hour
	start := intervalStart(clock.Now(), every)
	if want := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC); !start.Equal(want) {
		t.Fatalf("intervalStart = %s, want %s", start, want)
	}
	count := func() int {
		ds, err := store.Decisions(t.Context(), evidence.DecisionQuery{Verdicts: []string{"would-deny"}})
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if !strings.HasSuffix(d.ID, "/scan-20261202T000000Z") && !strings.HasSuffix(d.ID, "/scan-20261202T060000Z") {
				t.Errorf("record ID %q is not named after its interval", d.ID)
			}
		}
		return len(ds)
	}
	scanOnce(t.Context(), s, start, log, m, clock.Now)
	if n := count(); n != 3 {
		t.Errorf("%d would-deny records, want 3", n)
	}
	// A restart within the interval scans again, and records nothing new.
	clock.Advance(time.Hour)
	scanOnce(t.Context(), s, intervalStart(clock.Now(), every), log, m, clock.Now)
	if n := count(); n != 3 {
		t.Errorf("after a second scan in the interval: %d would-deny records, want 3", n)
	}
	clock.Advance(every)
	scanOnce(t.Context(), s, intervalStart(clock.Now(), every), log, m, clock.Now)
	if n := count(); n != 6 {
		t.Errorf("after the next interval's scan: %d would-deny records, want 6", n)
	}
	for _, want := range []string{`"msg":"audit scan finished","scan":"scan-20261202T060000Z"`, `"would_deny":3`,
		`"msg":"audit scan: rule","scan":"scan-20261202T060000Z","rule":"fresh-image"`, `"namespace":"legacy"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log does not contain %s:\n%s", want, logs.String())
		}
	}
	if got := testutil.ToFloat64(m.workloads.WithLabelValues("would-deny")); got != 3 {
		t.Errorf("buildguard_audit_workloads{verdict=would-deny} = %v, want 3", got)
	}
	if got := testutil.ToFloat64(m.last); got != float64(clock.Now().Unix()) {
		t.Errorf("last scan timestamp %v, want %d", got, clock.Now().Unix())
	}
}

// TestScheduleRun: the schedule waits until the server is ready, claims
// the scan, scans, and stops with its context; a second replica on the
// same schedule finds the scan claimed and does not run it.
func TestScheduleRun(t *testing.T) {
	cs, e := audittest.Cluster(t)
	m, err := NewScheduleMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	ready := func() error {
		if calls++; calls == 1 {
			return errors.New("policy informers not synced")
		}
		return nil
	}
	// Both replicas live in the same interval, even one that starts as
	// the hour turns.
	at := time.Now()
	now := func() time.Time { return at }
	runSchedule := func(owner, until string, ready func() error) string {
		t.Helper()
		var logs syncbuffer.Buffer
		s := &Schedule{
			Scanner: &Scanner{Client: cs, Evaluator: e}, Every: time.Hour, Ready: ready, Metrics: m, Now: now,
			Log: slog.New(slog.NewTextHandler(&logs, nil)),
			Claim: func(ctx context.Context, id string) (bool, error) {
				return Claim(ctx, cs, "buildguard-system", DefaultClaimLease, id, owner, time.Now())
			},
		}
		s.Completed = func(_ context.Context, r *Report) {
			fmt.Fprintf(&logs, "completed %s with %d workloads\n", r.ID, r.Totals.Workloads)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(logs.String(), until) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: no %q within 30s; log:\n%s", owner, until, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: Run = %v, want nil", owner, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: the schedule did not stop with its context", owner)
		}
		return logs.String()
	}
	logs := runSchedule("replica-a", "completed ", ready)
	want := "scan=" + ScanID(at.UTC().Truncate(time.Hour))
	// The complete scan's report is passed on, after it is logged.
	if c := "completed " + ScanID(at.UTC().Truncate(time.Hour)) + " with 4 workloads"; !strings.Contains(logs, c) ||
		strings.Index(logs, "audit scan finished") > strings.Index(logs, "completed ") {
		t.Errorf("log has no %q after the scan finished:\n%s", c, logs)
	}
	if !strings.Contains(logs, want) || calls < 2 {
		t.Errorf("log does not name the scan after its interval (%s), or the schedule did not wait to be ready (%d checks):\n%s", want, calls, logs)
	}
	logs = runSchedule("replica-b", "audit scan run by another replica", nil)
	if strings.Contains(logs, "audit scan started") || strings.Contains(logs, "completed ") {
		t.Errorf("replica-b scanned what replica-a had claimed:\n%s", logs)
	}
}
