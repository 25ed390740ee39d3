package webhook

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	admissionv1 "k8s.io/api/admission/v1"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/policy"
)

// Metrics are buildguard's Prometheus metrics, on a registry of their own.
// It also serves as the registry client's Observer.
type Metrics struct {
	reg           *prometheus.Registry
	reviews       *prometheus.CounterVec
	latency       prometheus.Histogram
	badRequests   prometheus.Counter
	registryReqs  *prometheus.CounterVec
	registryTimes prometheus.Histogram
	cache         *prometheus.CounterVec
	decisions     *prometheus.CounterVec
	// cacheCounts are cache's children for the registry client's two
	// caches: looked up once per image of every review, they are resolved
	// once here instead of hashing their labels each time.
	cacheCounts map[string]*[2]prometheus.Counter // cache → miss, hit
}

// NewMetrics returns metrics registered on a new registry, with the Go
// and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		reviews: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_reviews_total",
			Help: "Admission reviews answered, by verdict (allow, warn, deny, would-deny, error) and mode.",
		}, []string{"verdict", "mode"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildguard_review_duration_seconds",
			Help:    "Time from request received to response written.",
			Buckets: []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10},
		}),
		badRequests: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildguard_bad_requests_total",
			Help: "HTTP requests to /validate that were not a valid AdmissionReview.",
		}),
		registryReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_registry_requests_total",
			Help: "HTTP requests to registries, by registry host, method and status code (0: no response).",
		}, []string{"registry", "method", "code"}),
		registryTimes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "buildguard_registry_request_duration_seconds",
			Help:    "Duration of HTTP requests to registries.",
			Buckets: []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
		}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_cache_lookups_total",
			Help: "Registry cache lookups, by cache (tag, digest) and result (hit, miss).",
		}, []string{"cache", "result"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_decisions_total",
			Help: "Workload decisions by verdict (allow, warn, deny, would-deny), rule and namespace: one count per rule found (ignored findings aside), or one with rule=\"\" when none was.",
		}, []string{"verdict", "rule", "namespace"}),
	}
	m.cacheCounts = map[string]*[2]prometheus.Counter{}
	for _, c := range []string{"tag", "digest"} {
		m.cacheCounts[c] = &[2]prometheus.Counter{m.cache.WithLabelValues(c, "miss"), m.cache.WithLabelValues(c, "hit")}
	}
	m.reg.MustRegister(m.reviews, m.latency, m.badRequests, m.registryReqs, m.registryTimes, m.cache, m.decisions,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry returns the Prometheus registry, for more collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

func (m *Metrics) observe(resp *admissionv1.AdmissionResponse, v *policy.Verdict, d time.Duration) {
	m.latency.Observe(d.Seconds())
	verdict, mode := "error", ""
	if v != nil {
		verdict, mode = v.Word(), string(v.Mode)
	} else if resp != nil && resp.Allowed {
		verdict = "allow" // an operation or subresource with nothing to judge
	}
	m.reviews.WithLabelValues(verdict, mode).Inc()
}

// Decided counts a decision in buildguard_decisions_total; it implements
// decision.Observer.
func (m *Metrics) Decided(_ context.Context, d decision.Decision) {
	verdict, ns := d.Word(), d.Workload.Namespace
	rules := d.Verdict.RuleIDs(policy.ActionWarn)
	if len(rules) == 0 {
		m.decisions.WithLabelValues(verdict, "", ns).Inc()
		return
	}
	for _, r := range rules {
		m.decisions.WithLabelValues(verdict, r, ns).Inc()
	}
}

// CacheResult implements registry.Observer.
func (m *Metrics) CacheResult(cache string, hit bool) {
	if cs, ok := m.cacheCounts[cache]; ok {
		i := 0
		if hit {
			i = 1
		}
		cs[i].Inc()
		return
	}
	result := "miss"
	if hit {
		result = "hit"
	}
	m.cache.WithLabelValues(cache, result).Inc()
}

// Request implements registry.Observer.
func (m *Metrics) Request(registry, method string, status int, elapsed time.Duration) {
	m.registryReqs.WithLabelValues(registry, method, strconv.Itoa(status)).Inc()
	m.registryTimes.Observe(elapsed.Seconds())
}
