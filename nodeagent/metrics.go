package nodeagent

import (
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"buildguard.dev/buildguard/nodeagent/conns"
)

// Metrics are the node agent's Prometheus metrics, on a registry of their
// own.
type Metrics struct {
	reg            *prometheus.Registry
	batchesSent    prometheus.Counter
	itemsSent      *prometheus.CounterVec
	itemsRejected  prometheus.Counter
	batchesDropped *prometheus.CounterVec
	bytesDropped   prometheus.Counter
	sendErrors     *prometheus.CounterVec
	sendDuration   prometheus.Histogram
	bufferBatches  prometheus.Gauge
	bufferBytes    prometheus.Gauge
	dockerEvents   *prometheus.CounterVec
	dockerConnects prometheus.Counter
	dockerUp       prometheus.Gauge
	containerdUp   prometheus.Gauge
	builds         *prometheus.CounterVec
	connsSeen      prometheus.Counter
	connsReported  prometheus.Counter
	connsEvicted   prometheus.Counter
	sensor         *prometheus.GaugeVec
	sensorFallback *prometheus.GaugeVec
	sensorStats    sensorStatsCollector
}

// sensorStatsCollector exports the connection sensor's own counters
// (conns.Stats), read at scrape time: the eBPF ring buffer's drops are
// counted in the kernel, not by the agent.
type sensorStatsCollector struct {
	mu      sync.Mutex
	stats   func() conns.Stats
	dropped *prometheus.Desc
	unenr   *prometheus.Desc
}

func (c *sensorStatsCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.dropped
	ch <- c.unenr
}

func (c *sensorStatsCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	f := c.stats
	c.mu.Unlock()
	if f == nil {
		return
	}
	st := f()
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.Dropped))
	ch <- prometheus.MustNewConstMetric(c.unenr, prometheus.CounterValue, float64(st.Unenriched))
}

// watchSensor exports w's counters when it keeps any (conns.StatsReporter).
func (m *Metrics) watchSensor(w conns.Watcher) {
	sr, ok := w.(conns.StatsReporter)
	if !ok {
		return
	}
	m.sensorStats.mu.Lock()
	m.sensorStats.stats = sr.Stats
	m.sensorStats.mu.Unlock()
}

// NewMetrics returns metrics registered on a new registry, with the Go
// and process collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		batchesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildguard_node_agent_batches_sent_total", Help: "Report batches the server accepted.",
		}),
		itemsSent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_node_agent_items_sent_total", Help: "Builds and connections the server stored, by kind (build, connection); duplicates of a retried batch are not counted.",
		}, []string{"kind"}),
		itemsRejected: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildguard_node_agent_items_rejected_total", Help: "Items of accepted batches that the server refused (answered with an item error).",
		}),
		batchesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_node_agent_batches_dropped_total", Help: "Batches dropped unsent, by reason: buffer-full (the oldest made room), corrupt (damaged on disk, found at start), unreadable (reads of it kept failing), rejected (a 4xx answer), encode, store (the buffer directory failed).",
		}, []string{"reason"}),
		bytesDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildguard_node_agent_buffer_dropped_bytes_total", Help: "Bytes of batches the buffer deleted unsent (full, corrupt or unreadable).",
		}),
		sendErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_node_agent_send_errors_total", Help: "Failed sends, by reason: network, token, or the HTTP status code.",
		}, []string{"reason"}),
		sendDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "buildguard_node_agent_send_duration_seconds", Help: "Time to an answer of POST /v1/node-reports.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}),
		bufferBatches: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "buildguard_node_agent_buffer_batches", Help: "Batches waiting on disk.",
		}),
		bufferBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "buildguard_node_agent_buffer_bytes", Help: "Bytes of batches waiting on disk.",
		}),
		dockerEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_node_agent_docker_events_total", Help: "Docker events received, by type.",
		}, []string{"type"}),
		dockerConnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildguard_node_agent_docker_connects_total", Help: "Times the Docker event stream was (re)opened.",
		}),
		dockerUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "buildguard_node_agent_docker_connected", Help: "1 while the Docker event stream is open.",
		}),
		builds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_node_agent_builds_total", Help: "Image builds detected, by tool.",
		}, []string{"tool"}),
		connsSeen: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildguard_node_agent_connections_observed_total", Help: "Outbound connections the sensor saw.",
		}),
		connsReported: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildguard_node_agent_connections_reported_total", Help: "Outbound connections tied to a build and queued for the server.",
		}),
		connsEvicted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "buildguard_node_agent_connections_evicted_total", Help: "Connections pushed out of the in-memory window by newer ones before it expired.",
		}),
		sensor: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "buildguard_node_agent_sensor", Help: "1 for the connection sensor in use (ebpf, procfs).",
		}, []string{"sensor"}),
		sensorFallback: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "buildguard_node_agent_sensor_fallback", Help: "1 when the /proc sampler runs instead of eBPF, by reason: requested (--sensor=procfs), or the step at which eBPF failed (tracefs: not mounted on the node; format, maps, program, attach, ringbuf), or other. /status has the error.",
		}, []string{"reason"}),
		containerdUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "buildguard_node_agent_containerd_connected", Help: "1 while the containerd event stream is open.",
		}),
	}
	m.sensorStats.dropped = prometheus.NewDesc("buildguard_node_agent_sensor_dropped_total",
		"Connections the eBPF sensor lost in the kernel because its ring buffer was full.", nil, nil)
	m.sensorStats.unenr = prometheus.NewDesc("buildguard_node_agent_sensor_unenriched_total",
		"Connections the sensor saw whose process had gone before its /proc details were read.", nil, nil)
	m.reg.MustRegister(&m.sensorStats)
	m.reg.MustRegister(m.batchesSent, m.itemsSent, m.itemsRejected, m.batchesDropped, m.bytesDropped, m.sendErrors,
		m.sendDuration, m.bufferBatches, m.bufferBytes, m.dockerEvents, m.dockerConnects, m.dockerUp, m.builds,
		m.connsSeen, m.connsReported, m.connsEvicted, m.sensor, m.sensorFallback, m.containerdUp,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// BufferDropped counts a batch the spool deleted unsent (reason
// DropBufferFull, DropCorrupt or DropUnreadable); it is Spool's onDrop.
func (m *Metrics) BufferDropped(reason string, bytes int64) {
	m.batchesDropped.WithLabelValues(reason).Inc()
	m.bytesDropped.Add(float64(bytes))
}

func (m *Metrics) buffer(batches int, bytes int64) {
	m.bufferBatches.Set(float64(batches))
	m.bufferBytes.Set(float64(bytes))
}
