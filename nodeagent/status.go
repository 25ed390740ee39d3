package nodeagent

import (
	"errors"
	"strings"
	"sync"
	"time"

	"buildguard.dev/buildguard/nodeagent/conns"
)

// Runtime connection states, as /status reports them.
const (
	StateOff          = "off"          // not watched (flag off)
	StateWaiting      = "waiting"      // the socket does not exist (yet)
	StateConnecting   = "connecting"   // the socket exists, the stream is not open
	StateConnected    = "connected"    // the event stream is open
	StateReconnecting = "reconnecting" // the stream broke; retrying with backoff
)

// RuntimeStatus is what /status says of a runtime watcher.
type RuntimeStatus struct {
	State  string    `json:"state"`
	Socket string    `json:"socket,omitempty"`
	Error  string    `json:"error,omitempty"` // why it is not connected
	Since  time.Time `json:"since"`           // when State was entered
}

// runtimeState is a watcher's RuntimeStatus, set by its Run and read by
// the agent's /status handler.
type runtimeState struct {
	mu sync.Mutex
	s  RuntimeStatus
}

func (r *runtimeState) set(state, socket string, err error, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s.State != state {
		r.s.Since = now
	}
	r.s.State, r.s.Socket, r.s.Error = state, socket, ""
	if err != nil {
		r.s.Error = err.Error()
	}
}

func (r *runtimeState) get() RuntimeStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.s.State == "" {
		return RuntimeStatus{State: StateConnecting, Socket: r.s.Socket}
	}
	return r.s
}

// ErrProcfsRequested is the sensor fallback of `--sensor=procfs`: /proc
// sampling because it was asked for, not because eBPF failed.
var ErrProcfsRequested = errors.New("the /proc sampler was asked for (--sensor=procfs)")

// SensorStatus is what /status says of the connection sensor: which one
// runs, and, for the /proc sampler, why eBPF does not.
type SensorStatus struct {
	Sensor string `json:"sensor"` // conns.SensorEBPF or conns.SensorProcfs
	// Reason is empty for eBPF; else "requested", or the step at which
	// the eBPF sensor failed to load (conns.LoadError.Step: "tracefs",
	// "format", "maps", "program", "attach", "ringbuf"), or "other".
	Reason string `json:"reason,omitempty"`
	// Detail is the error, with what to do about it where that is known.
	Detail string `json:"detail,omitempty"`
}

// sensorStatus explains the sensor in use given conns.New's fallback.
func sensorStatus(sensor string, fallback error) SensorStatus {
	st := SensorStatus{Sensor: sensor}
	if fallback == nil {
		return st
	}
	st.Detail = fallback.Error()
	var le *conns.LoadError
	switch {
	case errors.Is(fallback, ErrProcfsRequested):
		st.Reason = "requested"
	case errors.As(fallback, &le):
		st.Reason = le.Step
		switch le.Step {
		case "tracefs":
			st.Detail += "; the node has no tracefs at /sys/kernel/tracing and a pod may not mount it: mount it on the node " +
				"(mount -t tracefs nodev /sys/kernel/tracing, or in /etc/fstab) and restart the agent for the eBPF sensor"
		case "maps", "program":
			if strings.Contains(st.Detail, "operation not permitted") {
				st.Detail += "; the container runtime's seccomp profile may refuse bpf() without CAP_SYS_ADMIN (containerd < 1.6, CRI-O < 1.24): " +
					"seccompProfile Unconfined gives the eBPF sensor there (docs/node-agent.md)"
			}
		}
	default:
		st.Reason = "other"
	}
	return st
}

// Status is the agent's /status document.
type Status struct {
	Node       string        `json:"node"`
	Sensor     SensorStatus  `json:"sensor"`
	Docker     RuntimeStatus `json:"docker"`
	Containerd RuntimeStatus `json:"containerd"`
	Buffer     struct {
		Batches int   `json:"batches"`
		Bytes   int64 `json:"bytes"`
	} `json:"buffer"`
}
