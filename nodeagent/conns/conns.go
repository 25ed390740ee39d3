package conns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"time"

	"buildguard.dev/buildguard/internal/logger"
)

// Sensor names reported by Watcher.Sensor.
const (
	SensorEBPF   = "ebpf"
	SensorProcfs = "procfs"
)

// Conn is one outbound TCP connection attempt seen on the node.
type Conn struct {
	Time        time.Time
	PID         int // thread group id of the connecting process; 0 when procfs could not find the socket's owner
	PPID        int // parent, when known
	Comm        string
	Cmdline     string // from /proc/PID/cmdline when still readable; may be empty
	CgroupID    uint64 // cgroup v2 id when known (eBPF), else 0
	ContainerID string // 64-hex container ID from /proc/PID/cgroup when it is a docker/containerd/cri-o container, else ""
	Dst         netip.AddrPort

	// Cgroup is the process's cgroup path from /proc/PID/cgroup (the line that
	// named the container, else the cgroup v2 line, else the first v1 line
	// that is not "/"); for a process that had exited, the name of its
	// memory cgroup as the kernel recorded it (eBPF), or its parent's path;
	// "" when none could be read. It lets callers attribute processes of
	// builders whose IDs are not 64-hex container IDs, such as BuildKit's
	// /docker/buildkit/<id>.
	Cgroup string
}

// Watcher reports connections until ctx ends.
type Watcher interface {
	Sensor() string // "ebpf" or "procfs"
	Run(ctx context.Context, emit func(Conn)) error
}

// Stats counts what a watcher has seen since it was created. Both watchers
// returned by New implement StatsReporter.
type Stats struct {
	// Reported is the number of connections passed to emit.
	Reported uint64
	// Dropped is the number of connections the eBPF sensor lost because its
	// ring buffer was full (emit too slow for the connection rate). The
	// procfs sensor never drops, but it does not see connections that open
	// and close between two samples.
	Dropped uint64
	// Unenriched is the number of reported connections whose process could
	// not be read from /proc (it had exited, or procfs found no owner for
	// the socket): Cmdline, ContainerID and Cgroup may be empty.
	Unenriched uint64
}

// StatsReporter is implemented by the watchers New returns.
type StatsReporter interface {
	Stats() Stats
}

// Options configure New. The zero value is usable.
type Options struct {
	// ProcRoot is where procfs is mounted. The default is /proc. It must be
	// the host's procfs in the host PID namespace: the eBPF sensor reports
	// host PIDs and reads their details under ProcRoot.
	ProcRoot string
	// Interval is the procfs sensor's sampling period. The default is 1s.
	Interval time.Duration
	// Log receives the reason the eBPF sensor could not load and drop
	// warnings. The default discards logs.
	Log *slog.Logger
	// ForceProcfs skips the eBPF sensor.
	ForceProcfs bool
}

func (o Options) withDefaults() Options {
	if o.ProcRoot == "" {
		o.ProcRoot = "/proc"
	}
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	o.Log = logger.OrDiscard(o.Log)
	return o
}

// New returns the eBPF watcher when it loads, else the procfs one; the reason
// eBPF could not load is logged and returned in fallback (a *LoadError).
// fallback is nil when eBPF loaded or when opts.ForceProcfs is set.
//
// New loads and attaches the eBPF program once to prove that it can, then
// releases it: Run loads it again and releases everything when it returns, so
// a Watcher that is never run holds no kernel resources.
func New(opts Options) (w Watcher, fallback error) {
	opts = opts.withDefaults()
	if opts.ForceProcfs {
		return newProcfsWatcher(opts), nil
	}
	ew, err := newEBPFWatcher(opts)
	if err == nil {
		return ew, nil
	}
	opts.Log.Warn("eBPF connection sensor unavailable; sampling /proc/net/tcp instead", "sensor", SensorProcfs, "error", err)
	return newProcfsWatcher(opts), err
}

// LoadError says why the eBPF sensor could not start.
type LoadError struct {
	// Step is what failed: "tracefs", "format", "maps", "program",
	// "attach" or "ringbuf".
	Step string
	Err  error
}

func (e *LoadError) Error() string {
	msg := fmt.Sprintf("ebpf connection sensor: %s: %v", e.Step, e.Err)
	if errors.Is(e.Err, fs.ErrPermission) {
		msg += " (needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN before Linux 5.8, and access to tracefs at /sys/kernel/tracing)"
	}
	return msg
}

func (e *LoadError) Unwrap() error { return e.Err }
