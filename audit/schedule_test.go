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
	"buildguard.dev/buildguard/internal/clock/clocktest"
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
	clock := clocktest.New(scheduleNow)
	s := &Scanner{Client: cs, Evaluator: e, Recorder: store, Clock: clock}
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
// the scan, scans, and scans again at the next interval boundary, and
// stops with its context; a second replica on the same schedule finds the
// scan claimed and does not run it.
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
	clk := clocktest.New(scheduleNow)
	// runSchedule runs a schedule as owner until it has gone through
	// intervals intervals, and returns its log.
	runSchedule := func(owner string, ready func() error, intervals int) string {
		t.Helper()
		var logs syncbuffer.Buffer
		s := &Schedule{
			Scanner: &Scanner{Client: cs, Evaluator: e}, Every: time.Hour, Ready: ready, Metrics: m, Clock: clk,
			Log: slog.New(slog.NewTextHandler(&logs, nil)),
			Claim: func(ctx context.Context, id string) (bool, error) {
				return Claim(ctx, cs, "buildguard-system", DefaultClaimLease, id, owner, clk.Now())
			},
		}
		s.Completed = func(_ context.Context, r *Report) {
			fmt.Fprintf(&logs, "completed %s with %d workloads\n", r.ID, r.Totals.Workloads)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		wait, cancelWait := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancelWait()
		if ready != nil {
			// Not ready: it waits readyPoll before it asks again.
			if err := clk.BlockUntil(wait, 1); err != nil {
				t.Fatalf("%s: no wait to be ready: %v; log:\n%s", owner, err, logs.String())
			}
			clk.Advance(readyPoll)
		}
		for i := range intervals {
			if i > 0 {
				clk.Advance(time.Hour)
			}
			// The interval's scan is done (or claimed by another) when
			// the schedule waits for the next.
			if err := clk.BlockUntil(wait, 1); err != nil {
				t.Fatalf("%s: no wait for interval %d: %v; log:\n%s", owner, i+2, err, logs.String())
			}
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
	first := ScanID(scheduleNow.UTC().Truncate(time.Hour))
	logs := runSchedule("replica-a", ready, 2)
	if calls != 2 {
		t.Errorf("the schedule asked %d times whether it was ready, want 2 (not ready, then ready after readyPoll)", calls)
	}
	// Each complete scan's report is passed on, after it is logged; a
	// scan is named after its interval.
	for _, id := range []string{first, ScanID(scheduleNow.UTC().Truncate(time.Hour).Add(time.Hour))} {
		c := "completed " + id + " with 4 workloads"
		if i := strings.Index(logs, c); i < 0 || !strings.Contains(logs[:i], `msg="audit scan finished" scan=`+id) {
			t.Errorf("log has no %q after the scan %s finished:\n%s", c, id, logs)
		}
	}
	if n := strings.Count(logs, "audit scan started"); n != 2 {
		t.Errorf("%d scans started in two intervals, want 2:\n%s", n, logs)
	}
	logs = runSchedule("replica-b", nil, 1)
	if !strings.Contains(logs, "audit scan run by another replica") || strings.Contains(logs, "audit scan started") || strings.Contains(logs, "completed ") {
		t.Errorf("replica-b scanned what replica-a had claimed, or did not say it was claimed:\n%s", logs)
	}
}
