package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/policyreport"
)

// Defaults of the server's periodic scan.
const (
	// defaultAuditConcurrency is low: scans share the registry client's
	// per-registry connection limit with admission reviews.
	defaultAuditConcurrency = 2
	minAuditInterval        = time.Minute
	// auditReadyPoll is how often the loop checks that the server is
	// ready (policies read) before its first scan.
	auditReadyPoll = time.Second
)

// auditLoop is `serve --audit-interval`: a scan of every workload when
// the server is ready and then at every multiple of the interval (since
// the Unix epoch, in UTC), recorded in the store when there is one.
//
// A scan's ID is the start of its interval, and replicas claim it in a
// Lease (audit.Claim): of replicas on the same schedule, one scans each
// interval, and a server restarted within an interval does not scan it
// again.
type auditLoop struct {
	every       time.Duration
	concurrency int
	exclude     string
	lease       string
	reports     string
}

func (a *auditLoop) register(fs *flag.FlagSet) {
	fs.DurationVar(&a.every, "audit-interval", 0, "scan every workload in the cluster this often (e.g. 6h) against current policy, recording would-deny decisions (0: never)")
	fs.StringVar(&a.exclude, "audit-exclude-namespaces", defaultAuditExclusions, "comma-separated namespaces a periodic scan does not judge (\"\" for none)")
	fs.IntVar(&a.concurrency, "audit-concurrency", defaultAuditConcurrency, "workloads a periodic scan judges at once; it shares registry connections with admission")
	fs.StringVar(&a.lease, "audit-lease", audit.DefaultClaimLease, "the Lease ([namespace/]name; the default namespace is the pod's) in which replicas claim each periodic scan, so that one of them runs it")
	fs.StringVar(&a.reports, "audit-policy-reports", string(policyreport.OpenReports), "policy reports each periodic scan writes: openreports (openreports.io/v1alpha1 Report, ClusterReport), wgpolicyk8s (wgpolicyk8s.io/v1alpha2 PolicyReport, ClusterPolicyReport) or none; written only where the API server serves their CRDs")
}

// newReportWriter returns the policy report writer of api ("none" or ""
// for none) on the cluster of cfg.
func newReportWriter(api string, cfg *rest.Config, log *slog.Logger) (*policyreport.Writer, error) {
	if api == "" || api == "none" {
		return nil, nil
	}
	a, err := policyreport.ParseAPI(api)
	if err != nil {
		return nil, &usageError{msg: err.Error() + " or none"}
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &policyreport.Writer{Client: dyn, Discovery: disc, API: a, Log: log}, nil
}

// claimer claims scans in a Lease as this process.
type claimer struct {
	client          kubernetes.Interface
	ns, name, owner string
}

func (c *claimer) claim(ctx context.Context, id string) (bool, error) {
	return audit.Claim(ctx, c.client, c.ns, c.name, id, c.owner, time.Now())
}

// newClaimer resolves --audit-lease; the process is named by its host
// name, which in a pod is the pod's name.
func (a *auditLoop) newClaimer(kube kubernetes.Interface) (*claimer, error) {
	ns, name, ok := strings.Cut(a.lease, "/")
	if !ok {
		name = a.lease
		b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
		if err != nil {
			return nil, &usageError{msg: fmt.Sprintf("--audit-lease %q: give namespace/name outside a pod (%v)", a.lease, err)}
		}
		ns = strings.TrimSpace(string(b))
	}
	if ns == "" || name == "" {
		return nil, &usageError{msg: fmt.Sprintf("--audit-lease %q: want [namespace/]name", a.lease)}
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("--audit-lease: naming this replica: %w", err)
	}
	return &claimer{client: kube, ns: ns, name: name, owner: fmt.Sprintf("%s-%d", host, os.Getpid())}, nil
}

// start checks the flags and, when --audit-interval is set, starts the
// loop; it ends with ctx. ready reports whether the server can judge
// (its policies are read); rec stores the records, or is nil.
func (a *auditLoop) start(ctx context.Context, cfg *rest.Config, kube kubernetes.Interface, e audit.Evaluator, rec audit.Recorder, ready func() error,
	log *slog.Logger, reg prometheus.Registerer) error {
	if a.reports != "" && a.reports != "none" {
		if _, err := policyreport.ParseAPI(a.reports); err != nil {
			return &usageError{msg: "--audit-policy-reports: " + err.Error() + " or none"}
		}
	}
	if a.every == 0 {
		return nil
	}
	switch {
	case a.every < minAuditInterval:
		return &usageError{msg: fmt.Sprintf("--audit-interval %v: want 0 (off) or at least %v", a.every, minAuditInterval)}
	case a.concurrency < 1:
		return &usageError{msg: fmt.Sprintf("--audit-concurrency %d: want at least 1", a.concurrency)}
	case kube == nil:
		return &usageError{msg: "--audit-interval needs a cluster: run inside one or pass --kubeconfig"}
	}
	cl, err := a.newClaimer(kube)
	if err != nil {
		return err
	}
	m, err := newAuditMetrics(reg)
	if err != nil {
		return err
	}
	s := &audit.Scanner{Client: kube, Evaluator: e, Recorder: rec, Concurrency: a.concurrency, Log: log,
		ExcludeNamespaces: splitList(a.exclude)}
	if en, ok := e.(*engine.Engine); ok {
		// An owned object is covered by its owner only under the same
		// policies. The review UI has wrapped the engine's policies by
		// now (serve starts it first).
		s.Policies, s.NamespaceLabels = en.Policies, en.Namespaces
	}
	if a.reports != "" && a.reports != "none" {
		if m.reports, err = newReportWriter(a.reports, cfg, log); err != nil {
			return err
		}
	}
	go a.run(ctx, s, cl.claim, ready, log, m, time.Now)
	return nil
}

// run scans once ready, then at every interval boundary, until ctx ends.
// claim, when not nil, says whether this replica runs a scan.
func (a *auditLoop) run(ctx context.Context, s *audit.Scanner, claim func(context.Context, string) (bool, error), ready func() error,
	log *slog.Logger, m *auditMetrics, now func() time.Time) {
	for ready != nil && ready() != nil {
		select {
		case <-ctx.Done():
			return
		case <-time.After(auditReadyPoll):
		}
	}
	for {
		t := now()
		start := intervalStart(t, a.every)
		switch mine, err := claimed(ctx, claim, audit.ScanID(start)); {
		case err != nil:
			log.Error("audit scan not run: its claim failed", "scan", audit.ScanID(start), "error", err)
			m.failed.Inc()
		case mine:
			scanOnce(ctx, s, start, log, m, now)
		default:
			log.Info("audit scan run by another replica", "scan", audit.ScanID(start))
		}
		wait := time.Until(intervalStart(t, a.every).Add(a.every))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func claimed(ctx context.Context, claim func(context.Context, string) (bool, error), id string) (bool, error) {
	if claim == nil {
		return true, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return claim(ctx, id)
}

// intervalStart is the start of the interval of length every that t is
// in, counting from the Unix epoch.
func intervalStart(t time.Time, every time.Duration) time.Time {
	return t.UTC().Truncate(every)
}

// scanOnce runs one scan named after the interval starting at start, and
// logs and measures what it found.
func scanOnce(ctx context.Context, s *audit.Scanner, start time.Time, log *slog.Logger, m *auditMetrics, now func() time.Time) {
	s.ID = audit.ScanID(start)
	begun := now()
	log.Info("audit scan started", "scan", s.ID)
	r, err := s.Scan(ctx)
	if r == nil {
		log.Error("audit scan failed", "scan", s.ID, "error", err)
		m.failed.Inc()
		return
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
	if err == nil {
		m.observe(r, begun, elapsed)
		if m.reports != nil {
			// A complete scan only: a partial one would remove the results
			// of what it did not get to.
			if _, err := m.reports.Write(ctx, r); err != nil && !errors.Is(err, policyreport.ErrNotServed) {
				log.Error("policy reports not written", "scan", r.ID, "error", err)
			}
		}
	}
}

// auditMetrics describe the last complete periodic scan.
type auditMetrics struct {
	workloads *prometheus.GaugeVec
	last      prometheus.Gauge
	duration  prometheus.Gauge
	failed    prometheus.Counter
	// reports writes each complete scan's policy reports, when set.
	reports *policyreport.Writer
}

func newAuditMetrics(reg prometheus.Registerer) (*auditMetrics, error) {
	m := &auditMetrics{
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

func (m *auditMetrics) observe(r *audit.Report, begun time.Time, elapsed time.Duration) {
	m.workloads.WithLabelValues("allow").Set(float64(r.Totals.Allow))
	m.workloads.WithLabelValues("warn").Set(float64(r.Totals.Warn))
	m.workloads.WithLabelValues(policy.WouldDeny).Set(float64(r.Totals.WouldDeny))
	m.workloads.WithLabelValues("error").Set(float64(r.Totals.Errors))
	m.last.Set(float64(begun.UnixNano()) / 1e9)
	m.duration.Set(elapsed.Seconds())
}
