package audit

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/policy"
)

// MinScheduleInterval is the shortest interval of a Schedule that
// `buildguard serve --audit-interval` accepts.
const MinScheduleInterval = time.Minute

// Timings of a Schedule.
const (
	// readyPoll is how often a Schedule checks that the server is ready
	// (policies read) before its first scan.
	readyPoll = time.Second
	// claimTimeout bounds a claim of a scan.
	claimTimeout = 30 * time.Second
)

// Schedule is `serve --audit-interval`: a scan of every workload when the
// server is ready and then at every multiple of Every (since the Unix
// epoch, in UTC), recorded by its Scanner's Recorder.
//
// A scan's ID is the start of its interval, and replicas claim it (Claim
// in a Lease): of replicas on the same schedule, one scans each interval,
// and a server restarted within an interval does not scan it again.
type Schedule struct {
	// Scanner scans; its ID is set for each scan. Required.
	Scanner *Scanner
	// Every is the interval. Required.
	Every time.Duration
	// Claim reports whether this replica runs the scan id. The default,
	// nil, runs every scan.
	Claim func(ctx context.Context, id string) (bool, error)
	// Ready reports whether the server can judge (its policies are
	// read); no scan starts before it returns nil. The default is always
	// ready.
	Ready func() error
	// Metrics describe the last complete scan. Required.
	Metrics *ScheduleMetrics
	// Completed, when set, is told of each complete scan's report once it
	// is logged and measured: the server writes its policy reports there.
	// A scan that stopped part way is not passed on: its report lacks
	// what it did not get to.
	Completed func(ctx context.Context, r *Report)
	// Log says what each scan found. The default discards.
	Log *slog.Logger
	// Clock tells the time of the intervals, and waits for them. The
	// default, nil, is the real clock.
	Clock clock.Clock
}

// Run scans once ready, then at every interval boundary, until ctx ends.
// It returns nil.
func (s *Schedule) Run(ctx context.Context) error {
	log := logger.OrDiscard(s.Log)
	clk := clock.OrReal(s.Clock)
	for s.Ready != nil && s.Ready() != nil {
		if !clock.Sleep(ctx, clk, readyPoll) {
			return nil
		}
	}
	for {
		t := clk.Now()
		start := intervalStart(t, s.Every)
		switch mine, err := claimed(ctx, s.Claim, ScanID(start)); {
		case err != nil:
			log.Error("audit scan not run: its claim failed", "scan", ScanID(start), "error", err)
			s.Metrics.failed.Inc()
		case mine:
			if r := scanOnce(ctx, s.Scanner, start, log, s.Metrics, clk.Now); r != nil && s.Completed != nil {
				s.Completed(ctx, r)
			}
		default:
			log.Info("audit scan run by another replica", "scan", ScanID(start))
		}
		if !clock.Sleep(ctx, clk, start.Add(s.Every).Sub(clk.Now())) {
			return nil
		}
	}
}

func claimed(ctx context.Context, claim func(context.Context, string) (bool, error), id string) (bool, error) {
	if claim == nil {
		return true, nil
	}
	ctx, cancel := context.WithTimeout(ctx, claimTimeout)
	defer cancel()
	return claim(ctx, id)
}

// intervalStart is the start of the interval of length every that t is
// in, counting from the Unix epoch.
func intervalStart(t time.Time, every time.Duration) time.Time {
	return t.UTC().Truncate(every)
}

// scanOnce runs one scan named after the interval starting at start, logs
// and measures what it found, and returns its report when it completed.
func scanOnce(ctx context.Context, s *Scanner, start time.Time, log *slog.Logger, m *ScheduleMetrics, now func() time.Time) *Report {
	s.ID = ScanID(start)
	begun := now()
	log.Info("audit scan started", "scan", s.ID)
	r, err := s.Scan(ctx)
	if r == nil {
		log.Error("audit scan failed", "scan", s.ID, "error", err)
		m.failed.Inc()
		return nil
	}
	if err != nil {
		log.Warn("audit scan stopped", "scan", s.ID, "error", err)
	}
	elapsed := now().Sub(begun)
	log.Info("audit scan finished", "scan", r.ID, "duration", elapsed.Round(time.Millisecond).String(),
		"listed", r.Listed, "workloads", r.Totals.Workloads, "images", r.Totals.Images,
		"would_deny", r.Totals.WouldDeny, "warn", r.Totals.Warn, "errors", r.Totals.Errors, "not_recorded", r.Totals.NotRecorded)
	for _, n := range r.ByNamespace {
		if n.WouldDeny > 0 || n.Errors > 0 {
			log.Info("audit scan: namespace", "scan", r.ID, "namespace", n.Namespace, "workloads", n.Workloads,
				"would_deny", n.WouldDeny, "warn", n.Warn, "errors", n.Errors)
		}
	}
	for _, rs := range r.ByRule {
		log.Info("audit scan: rule", "scan", r.ID, "rule", rs.Rule, "workloads", rs.Workloads, "images", rs.Images,
			"would_deny", rs.WouldDeny, "warn", rs.Warn)
	}
	if err != nil {
		return nil
	}
	m.observe(r, begun, elapsed)
	return r
}

// ScheduleMetrics describe the last complete scan of a Schedule.
type ScheduleMetrics struct {
	workloads *prometheus.GaugeVec
	last      prometheus.Gauge
	duration  prometheus.Gauge
	failed    prometheus.Counter
}

// NewScheduleMetrics returns the metrics of a Schedule, registered on reg
// unless it is nil.
func NewScheduleMetrics(reg prometheus.Registerer) (*ScheduleMetrics, error) {
	m := &ScheduleMetrics{
		workloads: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "buildguard_audit_workloads",
			Help: "Workloads the last complete audit scan judged, by verdict (allow, warn, would-deny, error)."}, []string{"verdict"}),
		last: prometheus.NewGauge(prometheus.GaugeOpts{Name: "buildguard_audit_last_scan_timestamp_seconds",
			Help: "When the last complete audit scan started, in seconds since the Unix epoch."}),
		duration: prometheus.NewGauge(prometheus.GaugeOpts{Name: "buildguard_audit_last_scan_duration_seconds",
			Help: "How long the last complete audit scan took."}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{Name: "buildguard_audit_scans_failed_total",
			Help: "Audit scans that could not list the workloads."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.workloads, m.last, m.duration, m.failed} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("audit metrics: %w", err)
		}
	}
	return m, nil
}

func (m *ScheduleMetrics) observe(r *Report, begun time.Time, elapsed time.Duration) {
	m.workloads.WithLabelValues("allow").Set(float64(r.Totals.Allow))
	m.workloads.WithLabelValues("warn").Set(float64(r.Totals.Warn))
	m.workloads.WithLabelValues(policy.WouldDeny).Set(float64(r.Totals.WouldDeny))
	m.workloads.WithLabelValues("error").Set(float64(r.Totals.Errors))
	m.last.Set(float64(begun.UnixNano()) / 1e9)
	m.duration.Set(elapsed.Seconds())
}
