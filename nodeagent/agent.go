package nodeagent

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/nodeagent/conns"
	"buildguard.dev/buildguard/nodereport"
)

// Agent runs the node agent: the Docker and containerd watchers and the
// connection sensor feed the Attributor; what it ties to builds is batched
// into NodeReports, stored in the Spool and delivered by the Sender.
type Agent struct {
	// Node is the Kubernetes node name every report names. Node and all
	// the parts but Log, Docker and Containerd are required.
	Node string
	// Docker and Containerd watch the node's runtimes for builds; either
	// may be nil (not watched).
	Docker     *DockerWatcher
	Containerd *ContainerdWatcher
	Conns      conns.Watcher
	// SensorFallback is why Conns is the /proc sampler rather than the
	// eBPF sensor: conns.New's fallback error, or ErrProcfsRequested; nil
	// when eBPF runs. /status and the metric
	// buildguard_node_agent_sensor_fallback say it.
	SensorFallback error
	Attrib         *Attributor
	Spool          *Spool
	Sender         *Sender
	Metrics        *Metrics
	Log            *slog.Logger
	// BatchInterval is the longest an item waits before its batch is
	// stored for sending. The default is 2s.
	BatchInterval time.Duration
	// BatchMaxItems is the most items in one batch. The default is 500.
	BatchMaxItems int
	// ProcRoot is the host's procfs, where a connection's parent is
	// looked up when the sensor found no container. The default is /proc.
	ProcRoot string
	// Clock tells the time of connections and builds, and ticks the
	// heartbeat and the batch interval. The default, nil, is the real
	// clock.
	Clock clock.Clock

	sensorUp atomic.Bool
	// beat is when Run's loop last went round (UnixNano; 0 before Run):
	// /healthz fails when it is stuck, so that the kubelet restarts it.
	beat atomic.Int64
}

// stuckAfter is how long Run's loop may go without a round before
// /healthz fails; it goes round at least every heartbeat.
const (
	heartbeat  = 10 * time.Second
	stuckAfter = 2 * time.Minute
)

func (a *Agent) now() time.Time {
	return clock.OrReal(a.Clock).Now()
}

func (a *Agent) log() *slog.Logger {
	return logger.OrDiscard(a.Log)
}

// Run runs until ctx ends; the batch being gathered is then stored, so a
// graceful stop loses nothing.
func (a *Agent) Run(ctx context.Context) error {
	sensor := a.Conns.Sensor()
	a.Attrib.Sensor = sensor
	a.Metrics.sensor.WithLabelValues(sensor).Set(1)
	if st := sensorStatus(sensor, a.SensorFallback); st.Reason != "" {
		a.Metrics.sensorFallback.WithLabelValues(st.Reason).Set(1)
		a.log().Info("connection sensor", "sensor", sensor, "reason", st.Reason, "detail", st.Detail)
	} else {
		a.log().Info("connection sensor", "sensor", sensor)
	}
	a.Metrics.watchSensor(a.Conns)
	a.Metrics.buffer(a.Spool.Len())

	sendCtx, stopSend := context.WithCancel(context.WithoutCancel(ctx))
	sendDone := make(chan struct{})
	go func() {
		defer close(sendDone)
		a.Sender.Run(sendCtx)
	}()
	defer func() {
		stopSend()
		<-sendDone
	}()

	// The sensor and the watcher are waited for: Run returns with the
	// eBPF program detached and the Docker stream closed.
	var wg sync.WaitGroup
	defer wg.Wait()
	connc := make(chan conns.Conn, 4096)
	wg.Go(func() { a.runSensor(ctx, connc) })
	builds := make(chan BuildInfo, 64)
	if a.Docker != nil {
		wg.Go(func() {
			if err := a.Docker.Run(ctx, builds); err != nil && ctx.Err() == nil {
				a.log().Error("docker watcher stopped", "error", err)
			}
		})
	}
	if a.Containerd != nil {
		wg.Go(func() {
			if err := a.Containerd.Run(ctx, builds); err != nil && ctx.Err() == nil {
				a.log().Error("containerd watcher stopped", "error", err)
			}
		})
	}

	// The pod shares the host's PID namespace: this is the PID the
	// sensor reports for the agent.
	self := os.Getpid()
	b := batcher{agent: a, report: nodereport.NewReport(a.Node, sensor)}
	clk := clock.OrReal(a.Clock)
	var flush <-chan time.Time
	var timer clock.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	beat := clk.NewTicker(heartbeat)
	defer beat.Stop()
	for {
		a.beat.Store(a.now().UnixNano())
		select {
		case <-beat.C():
			continue
		case <-ctx.Done():
			if err := b.flush(); err != nil {
				return err
			}
			return nil
		case c := <-connc:
			a.Metrics.connsSeen.Inc()
			if c.PID == self {
				// The agent's own reports: with a build judged by node
				// and time (BuildKit) they would count as its egress.
				continue
			}
			if c.ContainerID == "" {
				c.ContainerID = shimContainer(a.procRoot(), c.PPID)
			}
			before := a.Attrib.Evicted
			items := a.Attrib.Conn(c, a.now())
			a.Metrics.connsEvicted.Add(float64(a.Attrib.Evicted - before))
			b.report.Connections = append(b.report.Connections, items...)
			a.Metrics.connsReported.Add(float64(len(items)))
		case info := <-builds:
			item, items := a.Attrib.Build(info, a.now())
			if info.Tool == containerdTool && info.ImageID != "" {
				// The event ID says which runtime found it.
				item.EventID = "containerd-build/" + info.ImageID
			}
			b.report.Builds = append(b.report.Builds, item)
			b.report.Connections = append(b.report.Connections, items...)
			a.Metrics.connsReported.Add(float64(len(items)))
			a.log().Info("build attributed", "digest", item.ImageID, "tool", item.Tool, "connections", len(items))
		case <-flush:
			flush, timer = nil, nil
			if err := b.flush(); err != nil {
				a.log().Error("storing a batch failed", "error", err)
			}
			continue
		}
		switch {
		case b.report.Items() >= a.maxItems() || b.size() >= maxBatchBytes:
			if timer != nil {
				timer.Stop()
				flush, timer = nil, nil
			}
			if err := b.flush(); err != nil {
				a.log().Error("storing a batch failed", "error", err)
			}
		case b.report.Items() > 0 && timer == nil:
			timer = clk.NewTimer(durOr(a.BatchInterval, 2*time.Second))
			flush = timer.C()
		}
	}
}

func (a *Agent) procRoot() string {
	if a.ProcRoot == "" {
		return "/proc"
	}
	return a.ProcRoot
}

func (a *Agent) maxItems() int {
	if a.BatchMaxItems <= 0 {
		return 500
	}
	return a.BatchMaxItems
}

// runSensor runs the connection sensor, restarting it after a failure.
func (a *Agent) runSensor(ctx context.Context, out chan<- conns.Conn) {
	backoff := time.Second
	for {
		a.sensorUp.Store(true)
		err := a.Conns.Run(ctx, func(c conns.Conn) {
			select {
			case out <- c:
			case <-ctx.Done():
			}
		})
		a.sensorUp.Store(false)
		if ctx.Err() != nil {
			return
		}
		a.log().Error("connection sensor stopped; restarting", "sensor", a.Conns.Sensor(), "error", err, "in", backoff)
		// On the real clock, as the watchers' reconnects: a test that
		// holds the Agent's clock still does not hold up the restart.
		if !clock.Sleep(ctx, clock.Real{}, backoff) {
			return
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// batcher gathers one report at a time.
type batcher struct {
	agent  *Agent
	report nodereport.Report
}

// maxBatchBytes bounds a report's size well below what the server takes
// in one request (4 MiB by default).
const maxBatchBytes = 1 << 20

// size estimates the report's JSON size.
func (b *batcher) size() int {
	n := 200
	for _, x := range b.report.Builds {
		n += 400 + 70*len(x.ContainerIDs) + 12*len(x.PIDs)
		for _, s := range x.Steps {
			n += len(s) + 8
		}
		for _, t := range x.Tags {
			n += len(t) + 8
		}
	}
	for _, c := range b.report.Connections {
		n += 300 + len(c.Cmdline) + len(c.Process)
	}
	return n
}

// flush stores the report gathered so far, if any.
func (b *batcher) flush() error {
	if b.report.Items() == 0 {
		return nil
	}
	r := b.report
	b.report = nodereport.NewReport(r.Node, r.Sensor)
	data, err := json.Marshal(r)
	if err != nil {
		b.agent.Metrics.batchesDropped.WithLabelValues("encode").Inc()
		return fmt.Errorf("encoding a report: %w", err)
	}
	if err := b.agent.Spool.Put(data); err != nil {
		b.agent.Metrics.batchesDropped.WithLabelValues("store").Inc()
		return err
	}
	b.agent.Metrics.buffer(b.agent.Spool.Len())
	return nil
}

// Status reports which sensor runs and why, the runtimes' connections
// and the buffer.
func (a *Agent) Status() Status {
	st := Status{Node: a.Node, Sensor: sensorStatus(a.Conns.Sensor(), a.SensorFallback)}
	st.Docker, st.Containerd = RuntimeStatus{State: StateOff}, RuntimeStatus{State: StateOff}
	if a.Docker != nil {
		st.Docker = a.Docker.Status()
	}
	if a.Containerd != nil {
		st.Containerd = a.Containerd.Status()
	}
	st.Buffer.Batches, st.Buffer.Bytes = a.Spool.Len()
	return st
}

// Handler serves /metrics, /status (Status, as JSON), /healthz (the
// agent's loop goes round: it is not stuck on a hung disk or a deadlock)
// and /readyz (the connection sensor runs and the buffer takes files).
func (a *Agent) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", a.Metrics.Handler())
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(a.Status())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if b := a.beat.Load(); b != 0 {
			if since := a.now().Sub(time.Unix(0, b)); since > stuckAfter {
				http.Error(w, fmt.Sprintf("the agent's loop has been stuck for %s", since.Round(time.Second)), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.sensorUp.Load() {
			http.Error(w, "connection sensor not running", http.StatusServiceUnavailable)
			return
		}
		if err := a.Spool.Writable(); err != nil {
			http.Error(w, "buffer: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}
