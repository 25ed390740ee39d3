package nodeagent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/syncbuffer"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"buildguard.dev/buildguard/nodeagent/conns"
)

func getStatus(t *testing.T, h http.Handler) Status {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/status", nil))
	var st Status
	if rec.Code != http.StatusOK || json.Unmarshal(rec.Body.Bytes(), &st) != nil {
		t.Fatalf("/status = %d %s", rec.Code, rec.Body)
	}
	return st
}

// TestAgentWithoutDockerSocket is a node without Docker, where most
// Kubernetes nodes are today: the agent is ready, runs the containerd
// watcher and the connection sensor and finds a containerd build, says
// in /status that it waits for the Docker socket (logged once), and
// connects to Docker when the socket appears.
func TestAgentWithoutDockerSocket(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Second)
	f := newFakeContainerd()
	c := f.put(t, "application/vnd.oci.image.config.v1+json", testConfig(now.Add(-3*time.Second), "RUN wget http://203.0.113.9/x"))
	m := f.put(t, mediaOCIManifest, testManifest(mediaOCIManifest, c))
	f.images["local/app:1"] = ctrImage{Name: "local/app:1", Target: m}
	f.events = []ctrEnvelope{{Timestamp: now.Add(-time.Second), Namespace: "default", Topic: "/images/create", Event: imageEvent("local/app:1", nil)}}
	sensor := fixedConns{conns: []conns.Conn{
		{Time: now.Add(-2 * time.Second), PID: 555, Comm: "wget", Dst: netip.MustParseAddrPort("203.0.113.9:80")},
	}}
	a := newTestAgent(t, &fakeEngine{}, sensor)
	var logs syncbuffer.Buffer
	a.Log = slog.New(slog.NewTextHandler(&logs, nil))
	sock := filepath.Join(t.TempDir(), "docker.sock")
	docker, err := NewDocker("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	a.Docker = &DockerWatcher{Docker: docker, Socket: sock, Log: a.Log, Metrics: a.Metrics,
		MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond}
	a.Containerd = &ContainerdWatcher{Client: f, Arch: "amd64", Metrics: a.Metrics, Log: a.Log}
	h := a.Handler()

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor(t, "the containerd build found", func() bool {
		return testutil.ToFloat64(a.Metrics.builds.WithLabelValues("containerd")) == 1
	})
	waitFor(t, "the Docker socket waited for", func() bool { return a.Docker.Status().State == StateWaiting })
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/readyz", nil))
	if rec.Code != http.StatusOK {
		t.Errorf("/readyz without Docker = %d %s, want 200", rec.Code, rec.Body)
	}
	st := getStatus(t, h)
	if st.Docker.State != StateWaiting || st.Docker.Socket != sock || !strings.Contains(st.Docker.Error, "no such file") {
		t.Errorf("/status docker = %+v, want waiting for %s", st.Docker, sock)
	}
	if st.Containerd.State != StateConnected || st.Sensor.Sensor != "ebpf" || st.Node != "worker-1" {
		t.Errorf("/status = %+v, want containerd connected and the eBPF sensor", st)
	}
	if testutil.ToFloat64(a.Metrics.containerdUp) != 1 || testutil.ToFloat64(a.Metrics.dockerUp) != 0 {
		t.Errorf("connected metrics: containerd %v, docker %v; want 1 and 0",
			testutil.ToFloat64(a.Metrics.containerdUp), testutil.ToFloat64(a.Metrics.dockerUp))
	}
	// Many backoffs later, still said once.
	time.Sleep(100 * time.Millisecond)
	if n := strings.Count(logs.String(), "no docker socket"); n != 1 {
		t.Errorf("%q logged %d times, want once:\n%s", "no docker socket", n, logs.String())
	}
	if strings.Contains(logs.String(), "docker event stream lost") {
		t.Errorf("a missing socket logged as a lost stream:\n%s", logs.String())
	}

	// Docker is installed.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: &fakeEngine{}}
	go srv.Serve(ln)
	defer srv.Close()
	waitFor(t, "Docker connected", func() bool { return getStatus(t, h).Docker.State == StateConnected })
	if testutil.ToFloat64(a.Metrics.dockerUp) != 1 {
		t.Errorf("buildguard_node_agent_docker_connected = %v once connected, want 1", testutil.ToFloat64(a.Metrics.dockerUp))
	}
}

// TestSensorStatus says which sensor runs and why, in /status, in the
// metric buildguard_node_agent_sensor_fallback and in the log.
func TestSensorStatus(t *testing.T) {
	tracefs := &conns.LoadError{Step: "tracefs", Err: errors.New("tracefs is not mounted and mounting it at /sys/kernel/tracing failed: operation not permitted")}
	tests := []struct {
		name       string
		fallback   error
		wantReason string
		wantDetail string
	}{
		{"eBPF", nil, "", ""},
		{"asked for /proc", ErrProcfsRequested, "requested", "--sensor=procfs"},
		{"no tracefs on the node", tracefs, "tracefs", "mount -t tracefs nodev /sys/kernel/tracing"},
		{"seccomp refuses bpf", &conns.LoadError{Step: "maps", Err: errors.New("create map: operation not permitted")}, "maps", "seccompProfile Unconfined"},
		{"wrapped load error", fmt.Errorf("starting: %w", &conns.LoadError{Step: "attach", Err: errors.New("no such tracepoint")}), "attach", "no such tracepoint"},
		{"something else", errors.New("odd"), "other", "odd"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sensor := "procfs"
			if tt.fallback == nil {
				sensor = "ebpf"
			}
			a := newTestAgent(t, &fakeEngine{}, namedConns{fixedConns{}, sensor})
			a.SensorFallback = tt.fallback
			var logs syncbuffer.Buffer
			a.Log = slog.New(slog.NewTextHandler(&logs, nil))
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error)
			go func() { done <- a.Run(ctx) }()
			waitFor(t, "the loop started", func() bool { return a.beat.Load() != 0 })
			st := getStatus(t, a.Handler())
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if st.Sensor.Sensor != sensor || st.Sensor.Reason != tt.wantReason || !strings.Contains(st.Sensor.Detail, tt.wantDetail) {
				t.Errorf("/status sensor = %+v, want %s, reason %q, detail with %q", st.Sensor, sensor, tt.wantReason, tt.wantDetail)
			}
			if tt.wantReason != "" {
				if v := testutil.ToFloat64(a.Metrics.sensorFallback.WithLabelValues(tt.wantReason)); v != 1 {
					t.Errorf("buildguard_node_agent_sensor_fallback{reason=%q} = %v, want 1", tt.wantReason, v)
				}
				if !strings.Contains(logs.String(), "reason="+tt.wantReason) {
					t.Errorf("log does not name the reason %q:\n%s", tt.wantReason, logs.String())
				}
			} else if n := testutil.CollectAndCount(a.Metrics.sensorFallback); n != 0 {
				t.Errorf("buildguard_node_agent_sensor_fallback has %d series with eBPF running, want none", n)
			}
		})
	}
}

// namedConns is fixedConns under another sensor name.
type namedConns struct {
	fixedConns
	name string
}

func (n namedConns) Sensor() string { return n.name }
