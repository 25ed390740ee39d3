package nodeagent

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/nodeagent/conns"
	"buildguard.dev/buildguard/nodereport"
)

// fixedConns is a connection sensor that reports the connections it is
// given, then waits; stopped, when set, is closed once Run has returned,
// a while after ctx ended (as the eBPF sensor drains its ring).
type fixedConns struct {
	conns   []conns.Conn
	stopped chan struct{}
}

func (f fixedConns) Sensor() string { return "ebpf" }

// Stats reports a ring buffer that lost 7 connections.
func (f fixedConns) Stats() conns.Stats {
	return conns.Stats{Reported: uint64(len(f.conns)), Dropped: 7, Unenriched: 1}
}

func (f fixedConns) Run(ctx context.Context, emit func(conns.Conn)) error {
	for _, c := range f.conns {
		emit(c)
	}
	<-ctx.Done()
	if f.stopped != nil {
		time.Sleep(50 * time.Millisecond)
		close(f.stopped)
	}
	return nil
}

// newTestAgent is an agent of node worker-1 on engine f and sensor, whose
// server is away (nothing listens on 127.0.0.1:1, and there is no token):
// batches stay in the buffer for the test to read. Its batch interval is
// long: the batch is stored when the agent stops.
func newTestAgent(t *testing.T, f *fakeEngine, sensor conns.Watcher) *Agent {
	t.Helper()
	m := NewMetrics()
	spool, err := OpenSpool(filepath.Join(t.TempDir(), "buffer"), 0, m.BufferDropped)
	if err != nil {
		t.Fatal(err)
	}
	return &Agent{
		Node:          "worker-1",
		Docker:        &DockerWatcher{Docker: f.start(t), Settle: 20 * time.Millisecond, Metrics: m},
		Conns:         sensor,
		Attrib:        &Attributor{},
		Spool:         spool,
		Sender:        &Sender{URL: "https://127.0.0.1:1/v1/node-reports", TokenFile: filepath.Join(t.TempDir(), "none"), Spool: spool, Metrics: m, MinBackoff: time.Hour},
		Metrics:       m,
		BatchInterval: time.Hour,
	}
}

// runUntilBuild runs a until it found a build of tool and its sensor's
// connections; stop ends it and returns the batch it stored at shutdown,
// decoded and as stored.
func runUntilBuild(t *testing.T, a *Agent, tool string, conns int) (stop func() (nodereport.Report, []byte)) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "the build found", func() bool {
		return testutil.ToFloat64(a.Metrics.builds.WithLabelValues(tool)) == 1 && testutil.ToFloat64(a.Metrics.connsSeen) == float64(conns)
	})
	return func() (nodereport.Report, []byte) {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		_, data, ok, err := a.Spool.Oldest()
		if err != nil || !ok {
			t.Fatalf("no batch stored at shutdown: %v", err)
		}
		var r nodereport.Report
		if err := json.Unmarshal(data, &r); err != nil {
			t.Fatal(err)
		}
		return r, data
	}
}

// TestAgentReportsBuildWithItsConnection runs the agent on a fake Docker
// Engine's classic build and a sensor that saw the RUN step's wget and an
// unrelated connection; the batch it stores is a NodeReport the server's
// parser takes whole.
func TestAgentReportsBuildWithItsConnection(t *testing.T) {
	t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	f := classicBuild(t0)
	dst := netip.MustParseAddrPort("127.0.0.23:8080")
	sensor := fixedConns{conns: []conns.Conn{
		{Time: t0.Add(65 * time.Millisecond), PID: 4243, PPID: 4242, Comm: "wget", Cmdline: "wget -O /payload http://127.0.0.23:8080/payload", ContainerID: hexID('2'), CgroupID: 99, Dst: dst},
		{Time: t0.Add(66 * time.Millisecond), PID: 77, Comm: "curl", Dst: netip.MustParseAddrPort("203.0.113.1:443")},
	}, stopped: make(chan struct{})}
	a := newTestAgent(t, f, sensor)
	stop := runUntilBuild(t, a, "docker", 2)
	if n, _ := a.Spool.Len(); n != 0 {
		t.Fatalf("%d batches stored before the batch interval", n)
	}
	// The sensor's own losses are on /metrics.
	const wantStats = `
# HELP buildguard_node_agent_sensor_dropped_total Connections the eBPF sensor lost in the kernel because its ring buffer was full.
# TYPE buildguard_node_agent_sensor_dropped_total counter
buildguard_node_agent_sensor_dropped_total 7
`
	if err := testutil.GatherAndCompare(a.Metrics.reg, strings.NewReader(wantStats), "buildguard_node_agent_sensor_dropped_total"); err != nil {
		t.Errorf("sensor drops: %v", err)
	}
	r, data := stop()
	select {
	case <-sensor.stopped:
	default:
		t.Error("Run returned before the sensor stopped")
	}
	if r.Node != "worker-1" || r.Sensor != "ebpf" || len(r.Builds) != 1 || len(r.Connections) != 1 || r.Connections[0].PID != 4243 {
		t.Fatalf("report %s", data)
	}
	if b := r.Builds[0]; b.CgroupID != "99" || len(b.PIDs) != 2 || b.PIDs[1] != 4243 {
		t.Errorf("build %+v: want the wget's cgroup and PID added", b)
	}
	p, err := nodereport.ParseAgent(data)
	if err != nil || len(p.Errors) != 0 || len(p.Report.Builds) != 1 || len(p.Report.Connections) != 1 {
		t.Fatalf("ParseAgent = %+v, %v", p, err)
	}
}

// With a build judged by node and time (BuildKit: no containers), the
// node's connections during it are the build's, but not the agent's own
// (its reports to buildguard), which would count as the build's egress.
func TestAgentLeavesOutItsOwnConnections(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	img := "sha256:" + hexID('e')
	f := &fakeEngine{
		events: []Event{ev("image", "tag", img, now.Add(-time.Second), map[string]string{"name": "bk:1"})},
		images: map[string]Image{img: {ID: img, Created: now.Add(-2 * time.Second), RepoTags: []string{"bk:1"}}},
		history: map[string][]HistoryEntry{img: {
			{ID: img, Created: now.Add(-2 * time.Second).Unix(), CreatedBy: "RUN /bin/sh -c wget http://203.0.113.9/x # buildkit"},
		}},
	}
	at := now.Add(-1500 * time.Millisecond)
	sensor := fixedConns{conns: []conns.Conn{
		{Time: at, PID: os.Getpid(), Comm: "buildguard", Dst: netip.MustParseAddrPort("10.96.0.10:443")},
		{Time: at, PID: 555, Comm: "wget", Dst: netip.MustParseAddrPort("203.0.113.9:80")},
	}}
	r, data := runUntilBuild(t, newTestAgent(t, f, sensor), "buildkit", 2)()
	if len(r.Builds) != 1 || len(r.Connections) != 1 || r.Connections[0].PID != 555 {
		t.Errorf("report %s: want the build and the wget's connection only", data)
	}
}

// The batch gathered is stored for sending once BatchInterval has
// passed on the agent's clock since its first item, the agent still
// running.
func TestAgentStoresBatchAfterInterval(t *testing.T) {
	t0 := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	sensor := fixedConns{conns: []conns.Conn{
		{Time: t0.Add(65 * time.Millisecond), PID: 4243, PPID: 4242, Comm: "wget", ContainerID: hexID('2'), CgroupID: 99, Dst: netip.MustParseAddrPort("127.0.0.23:8080")},
	}}
	a := newTestAgent(t, classicBuild(t0), sensor)
	clk := clocktest.New(time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC))
	a.Clock, a.BatchInterval = clk, 0 // the default, 2s
	stop := runUntilBuild(t, a, "docker", 1)
	wait, cancelWait := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancelWait()
	// The heartbeat, and the batch's timer.
	if err := clk.BlockUntil(wait, 2); err != nil {
		t.Fatalf("no batch timer on the clock: %v", err)
	}
	clk.Advance(2*time.Second - time.Nanosecond)
	if n, _ := a.Spool.Len(); n != 0 {
		t.Fatalf("%d batches stored before the batch interval", n)
	}
	clk.Advance(time.Nanosecond)
	waitFor(t, "the batch stored", func() bool { n, _ := a.Spool.Len(); return n == 1 })
	_, data, _, err := a.Spool.Oldest()
	if err != nil {
		t.Fatal(err)
	}
	var r nodereport.Report
	if err := json.Unmarshal(data, &r); err != nil || len(r.Builds) != 1 || len(r.Connections) != 1 {
		t.Errorf("batch stored %s (%v), want the build and its connection", data, err)
	}
	stop()
}

// /healthz fails when the agent's loop has not gone round for
// stuckAfter (a hung buffer disk, a deadlock), so that the kubelet
// restarts it; a loop that goes round, if only at each heartbeat, is
// healthy.
func TestAgentHealthzSeesAStuckLoop(t *testing.T) {
	clk := clocktest.New(time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC))
	a := newTestAgent(t, &fakeEngine{}, fixedConns{})
	a.Clock = clk
	h := a.Handler()
	code := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		return rec.Code
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "the loop started", func() bool { return a.beat.Load() != 0 })
	if c := code(); c != http.StatusOK {
		t.Errorf("/healthz of a running loop = %d, want 200", c)
	}
	// Three minutes on the clock with nothing to do: the heartbeat takes
	// the loop round.
	clk.Advance(3 * time.Minute)
	waitFor(t, "a heartbeat", func() bool { return a.beat.Load() == clk.Now().UnixNano() })
	if c := code(); c != http.StatusOK {
		t.Errorf("/healthz of an idle loop 3m on = %d, want 200", c)
	}
	// A loop that no longer goes round (here, as it has returned).
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	clk.Advance(stuckAfter)
	if c := code(); c != http.StatusOK {
		t.Errorf("/healthz of a loop stuck for stuckAfter = %d, want 200 (not yet)", c)
	}
	clk.Advance(time.Second)
	if c := code(); c != http.StatusServiceUnavailable {
		t.Errorf("/healthz of a loop stuck for more than stuckAfter = %d, want 503", c)
	}
}
