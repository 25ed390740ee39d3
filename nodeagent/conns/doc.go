// Package conns reports outbound TCP connections made on a node, with the
// process that made them: the "outbound network connection logs from
// container hosts or build environments" of MITRE ATT&CK T1612 / AN1261.
//
// New picks one of two sensors and Watcher.Sensor says which:
//
// # ebpf
//
// A tracepoint program on sock:inet_sock_set_state, assembled at run time
// with cilium/ebpf's asm package (no clang, no object files). The field
// offsets come from tracefs's events/sock/inet_sock_set_state/format, so the
// program follows the running kernel's record layout. For every TCP socket
// that enters SYN_SENT — which happens inside connect(2), in the connecting
// task — it records the thread group id, cgroup v2 id, comm, parent tgid,
// the name of the task's memory cgroup (the leaf, which holds the container
// ID under docker, containerd and CRI-O, in cgroup v1 and v2; the
// task_struct and cgroup offsets come from the kernel's BTF, and both are
// left out without it), destination and CLOCK_MONOTONIC time in a 1 MiB ring
// buffer. User space converts the time to wall clock and adds the command
// line, parent, cgroup path and container ID from /proc/PID. For a process
// that has already exited, the kernel's comm, parent and cgroup name are
// used, failing which the parent's cgroup (in a Dockerfile RUN step, the
// shell that ran the command). When the
// ring buffer is full (emit slower than the connection rate) events are
// dropped in the kernel and counted in Stats.Dropped. Every destination is
// reported, loopback included: policy decides what matters.
//
// Needs: Linux 5.8+ (ring buffer; 5.11+ or a raised RLIMIT_MEMLOCK for
// memory accounting), CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before 5.8),
// tracefs — if no tracefs or debugfs is mounted, mounted at
// /sys/kernel/tracing while the program loads and attaches and unmounted
// after, which needs CAP_SYS_ADMIN, so a DaemonSet should rather mount the
// host's /sys/kernel/tracing —, the host PID namespace (the kernel
// reports host PIDs, which are looked up under ProcRoot), and the host's
// /proc. kprobes are not used. The program is declared "Dual MIT/GPL"
// because bpf_probe_read_kernel and bpf_get_current_task are GPL-only
// helpers.
//
// # procfs
//
// The fallback when eBPF cannot load, or when Options.ForceProcfs is set. It
// samples /proc/PID/net/tcp and tcp6 every Interval once per network
// namespace (by the inode of /proc/PID/ns/net, so containers with their own
// namespace are covered) and keeps SYN_SENT sockets and ESTABLISHED sockets
// whose local address and port are not a listener's of that namespace (on
// that address or a wildcard) and whose local port lies in
// ip_local_port_range. Each connection (namespace, socket inode, peer) is
// reported once, at the first sample that shows it, with the PID found by
// scanning /proc/PID/fd for "socket:[inode]".
//
// Limits of procfs: connections that open and close between two samples are
// missed; the time is the sample's, not the connect's; an outbound
// connection bound explicitly to a non-ephemeral port, or an accepted one
// whose listener has closed, is misjudged; ip_local_port_range is read from
// the agent's own namespace and assumed for all; a socket whose owner could
// not be found is reported with PID 0; CgroupID is always 0. It needs the
// host PID namespace and read access to other processes' /proc entries
// (root, or CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH).
package conns
