//go:build linux

package conns

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads eBPF programs and reads every process's /proc entries")
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// applet returns a path to busybox under name, so the child's comm is name.
func applet(t *testing.T, name string) string {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (Debian busybox-static) is needed: %v", err)
	}
	p := filepath.Join(t.TempDir(), name)
	if err := os.Symlink(bb, p); err != nil {
		t.Fatal(err)
	}
	return p
}

// collector keeps the Conns to one destination.
type collector struct {
	dst netip.AddrPort
	mu  sync.Mutex
	got []Conn
	ch  chan struct{}
}

func newCollector(dst netip.AddrPort) *collector {
	return &collector{dst: dst, ch: make(chan struct{}, 1)}
}

func (c *collector) emit(conn Conn) {
	if conn.Dst != c.dst {
		return
	}
	c.mu.Lock()
	c.got = append(c.got, conn)
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
}

// find returns the first Conn from pid.
func (c *collector) find(pid int) (Conn, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.got {
		if conn.PID == pid {
			return conn, true
		}
	}
	return Conn{}, false
}

func (c *collector) count(pid int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, conn := range c.got {
		if conn.PID == pid {
			n++
		}
	}
	return n
}

// runWatcher runs w until the test ends and fails the test if Run fails.
func runWatcher(t *testing.T, w Watcher, emit func(Conn)) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx, emit) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("Run = %v, want nil after cancel", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("Run did not return after its context ended")
		}
	}
	t.Cleanup(stop)
	return stop
}

// TestEBPFWatcherSeesWget: a child process (busybox wget) connects to a
// listener on 127.0.0.23; the eBPF watcher reports its PID, parent, comm,
// command line and destination while the child waits for the response.
func TestEBPFWatcherSeesWget(t *testing.T) {
	requireRoot(t)
	w, fallback := New(Options{Log: testLogger(t)})
	if fallback != nil {
		t.Fatalf("New: eBPF sensor did not load: %v", fallback)
	}
	if got := w.Sensor(); got != SensorEBPF {
		t.Fatalf("Sensor() = %q, want %q", got, SensorEBPF)
	}

	// The handler holds every request until the test has seen the event,
	// so wget is alive when the watcher reads its /proc entry.
	release := make(chan struct{})
	var releaseOnce sync.Once
	releaseAll := func() { releaseOnce.Do(func() { close(release) }) }
	ln, err := net.Listen("tcp4", "127.0.0.23:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		<-release
		io.WriteString(rw, "payload\n")
	}), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { releaseAll(); srv.Close() })
	dst := netip.MustParseAddrPort(ln.Addr().String())

	col := newCollector(dst)
	start := time.Now()
	runWatcher(t, w, col.emit)

	// Run attaches asynchronously: connect again until one child is seen.
	wget := applet(t, "wget")
	url := fmt.Sprintf("http://%s/payload", dst)
	var children []*exec.Cmd
	t.Cleanup(func() {
		releaseAll()
		for _, c := range children {
			c.Process.Kill()
			c.Wait()
		}
	})
	deadline := time.After(60 * time.Second)
	var conn Conn
	var child *exec.Cmd
	for child == nil {
		c := exec.Command(wget, "-q", "-O", "/dev/null", url)
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		children = append(children, c)
		select {
		case <-col.ch:
		case <-time.After(250 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no connection to %s reported in 60s", dst)
		}
		for _, c := range children {
			if got, ok := col.find(c.Process.Pid); ok {
				conn, child = got, c
				break
			}
		}
	}
	releaseAll()
	t.Logf("reported: %+v", conn)
	if err := child.Wait(); err != nil {
		t.Errorf("wget: %v", err)
	}

	if conn.Comm != "wget" {
		t.Errorf("Comm = %q, want wget", conn.Comm)
	}
	if conn.PPID != os.Getpid() {
		t.Errorf("PPID = %d, want the test's PID %d", conn.PPID, os.Getpid())
	}
	if want := wget + " -q -O /dev/null " + url; conn.Cmdline != want {
		t.Errorf("Cmdline = %q, want %q", conn.Cmdline, want)
	}
	if conn.CgroupID == 0 {
		t.Errorf("CgroupID = 0, want the cgroup v2 id")
	}
	if conn.ContainerID != "" {
		t.Errorf("ContainerID = %q, want none for a process of the test", conn.ContainerID)
	}
	if now := time.Now(); conn.Time.Before(start.Add(-time.Second)) || conn.Time.After(now.Add(time.Second)) {
		t.Errorf("Time = %v, want between %v and %v", conn.Time, start, now)
	}
	st := w.(StatsReporter).Stats()
	if st.Reported == 0 {
		t.Errorf("Stats().Reported = 0 after a reported connection")
	}
}

// TestEBPFWatcherWithoutProc: with nothing readable under ProcRoot (as for
// a process that has exited), the parent and comm still come from the
// kernel.
func TestEBPFWatcherWithoutProc(t *testing.T) {
	requireRoot(t)
	w, fallback := New(Options{ProcRoot: t.TempDir(), Log: testLogger(t)})
	if fallback != nil {
		t.Fatalf("New: eBPF sensor did not load: %v", fallback)
	}
	ln, err := net.Listen("tcp4", "127.0.0.24:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dst := netip.MustParseAddrPort(ln.Addr().String())
	col := newCollector(dst)
	runWatcher(t, w, col.emit)

	wget := applet(t, "wget")
	deadline := time.After(60 * time.Second)
	var pids []int
	for found := false; !found; {
		c := exec.Command(wget, "-q", "-O", "/dev/null", "http://"+dst.String()+"/")
		c.Run() // fails: the server closes the connection at once
		pids = append(pids, c.Process.Pid)
		select {
		case <-col.ch:
		case <-time.After(250 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no connection to %s reported in 60s", dst)
		}
		for _, pid := range pids {
			conn, ok := col.find(pid)
			if !ok {
				continue
			}
			if conn.Comm != "wget" || conn.PPID != os.Getpid() || conn.Cmdline != "" || conn.Dst != dst {
				t.Errorf("Conn = %+v, want comm wget, parent %d from the kernel, no command line", conn, os.Getpid())
			}
			found = true
			break
		}
	}
	if st := w.(StatsReporter).Stats(); st.Unenriched == 0 {
		t.Errorf("Stats() = %+v, want Unenriched > 0", st)
	}
}

// memoryCgroupRoot returns the mount point of the memory controller: its
// cgroup v1 hierarchy, else the cgroup2 mount when memory is enabled there.
func memoryCgroupRoot(t *testing.T) string {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var v2 string
	for _, line := range strings.Split(string(mi), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		switch {
		case g[0] == "cgroup" && slices.Contains(strings.Split(g[2], ","), "memory"):
			return f[4]
		case g[0] == "cgroup2" && v2 == "":
			v2 = f[4]
		}
	}
	if v2 != "" {
		if ctl, err := os.ReadFile(filepath.Join(v2, "cgroup.subtree_control")); err == nil && slices.Contains(strings.Fields(string(ctl)), "memory") {
			return v2
		}
	}
	t.Skip("no memory cgroup controller to create a container-like cgroup in")
	return ""
}

// TestEBPFCgroupOfExitedProcess: the kernel records the memory cgroup's
// name, so a process in a docker-like cgroup that cannot be read under
// ProcRoot any more still gets its container ID.
func TestEBPFCgroupOfExitedProcess(t *testing.T) {
	requireRoot(t)
	id := fmt.Sprintf("%064x", time.Now().UnixNano())
	parent := filepath.Join(memoryCgroupRoot(t), fmt.Sprintf("buildguard-conns-test-%d", os.Getpid()))
	cg := filepath.Join(parent, "docker", id)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Children first; the cgroups are empty once the child exited.
		os.Remove(cg)
		os.Remove(filepath.Dir(cg))
		os.Remove(parent)
	})

	w, fallback := New(Options{ProcRoot: t.TempDir(), Log: testLogger(t)})
	if fallback != nil {
		t.Fatalf("New: eBPF sensor did not load: %v", fallback)
	}
	dst := refusedAddr(t, "127.0.0.27")
	col := newCollector(dst)
	runWatcher(t, w, col.emit)

	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (Debian busybox-static) is needed: %v", err)
	}
	// The shell moves itself into the cgroup, then becomes nc.
	nc := applet(t, "nc")
	script := fmt.Sprintf("echo $$ > %s/cgroup.procs && exec %s -w 2 %s %d", cg, nc, dst.Addr(), dst.Port())
	deadline := time.After(60 * time.Second)
	var pids []int
	for {
		c := exec.Command(bb, "sh", "-c", script)
		if out, err := c.CombinedOutput(); err != nil && !strings.Contains(string(out), "refused") {
			t.Fatalf("child: %v\n%s", err, out)
		}
		pids = append(pids, c.Process.Pid)
		for _, pid := range pids {
			if conn, ok := col.find(pid); ok {
				if conn.ContainerID != id || conn.Cgroup != id || conn.Comm != "nc" {
					t.Errorf("Conn = %+v, want container ID %s from the kernel's cgroup name", conn, id)
				}
				return
			}
		}
		select {
		case <-col.ch:
		case <-time.After(100 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no connection to %s reported in 60s", dst)
		}
	}
}

// TestProcfsWatcherSeesNc: a child process (busybox nc) holds a connection
// to 127.0.0.23 open; the procfs watcher reports it once, with its PID.
func TestProcfsWatcherSeesNc(t *testing.T) {
	requireRoot(t)
	w, fallback := New(Options{ForceProcfs: true, Interval: 50 * time.Millisecond, Log: testLogger(t)})
	if fallback != nil {
		t.Errorf("New(ForceProcfs) fallback = %v, want nil", fallback)
	}
	if got := w.Sensor(); got != SensorProcfs {
		t.Fatalf("Sensor() = %q, want %q", got, SensorProcfs)
	}

	ln, err := net.Listen("tcp4", "127.0.0.23:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	dst := netip.MustParseAddrPort(ln.Addr().String())

	nc := exec.Command(applet(t, "nc"), dst.Addr().String(), fmt.Sprint(dst.Port()))
	stdin, err := nc.StdinPipe() // held open: nc stays connected
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdin.Close(); nc.Process.Kill(); nc.Wait() })
	select {
	case server := <-accepted:
		// Keep the server side referenced: if the garbage collector
		// closed it, nc would see EOF and exit before being sampled.
		t.Cleanup(func() { server.Close() })
	case <-time.After(30 * time.Second):
		t.Fatal("nc did not connect")
	}

	col := newCollector(dst)
	stop := runWatcher(t, w, col.emit)
	var conn Conn
	for ok := false; !ok; conn, ok = col.find(nc.Process.Pid) {
		select {
		case <-col.ch:
		case <-time.After(30 * time.Second):
			col.mu.Lock()
			got := dump(col.got)
			col.mu.Unlock()
			tcp, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", nc.Process.Pid))
			fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", nc.Process.Pid))
			var links []string
			for _, fd := range fds {
				l, _ := os.Readlink(fd)
				links = append(links, fd+" -> "+l)
			}
			t.Fatalf("no connection from nc (pid %d) to %s reported in 30s; reported to it:\n%s\nnc's fds: %s\nnc's /proc/net/tcp:\n%s",
				nc.Process.Pid, dst, got, strings.Join(links, ", "), tcp)
		}
	}
	if conn.Comm != "nc" || conn.PPID != os.Getpid() || !strings.HasSuffix(conn.Cmdline, fmt.Sprintf(" %s %d", dst.Addr(), dst.Port())) {
		t.Errorf("Conn = %+v, want comm nc, parent %d, command line ending in the destination", conn, os.Getpid())
	}
	// Three more samples see the connection again: it is reported once.
	pw := w.(*procfsWatcher)
	for target := pw.samples.Load() + 3; pw.samples.Load() < target; {
		select {
		case <-col.ch:
		case <-time.After(10 * time.Millisecond):
		}
	}
	stop()
	if n := col.count(nc.Process.Pid); n != 1 {
		t.Errorf("connection reported %d times, want once", n)
	}
}

// TestNotRootFallsBack runs New as an unprivileged user (a copy of this
// test binary under uid 65534): it must fall back to procfs and say why.
func TestNotRootFallsBack(t *testing.T) {
	if os.Getenv("CONNS_NONROOT_CHILD") == "1" {
		nonRootChild()
		return
	}
	requireRoot(t)
	dir, err := os.MkdirTemp("", "conns-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "conns.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestNotRootFallsBack$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CONNS_NONROOT_CHILD=1")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("unprivileged child: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "fallback: ") {
		t.Fatalf("unprivileged child did not report its fallback:\n%s", out)
	}
	t.Logf("unprivileged child:\n%s", out)
}

// nonRootChild checks New's fallback and prints it; a failure exits 1.
func nonRootChild() {
	fail := func(format string, args ...any) {
		fmt.Printf(format+"\n", args...)
		os.Exit(1)
	}
	if os.Geteuid() == 0 {
		fail("child runs as root")
	}
	w, fallback := New(Options{})
	var le *LoadError
	switch {
	case fallback == nil:
		fail("New loaded eBPF without privileges")
	case !errors.As(fallback, &le):
		fail("fallback %v is not a *LoadError", fallback)
	case !errors.Is(fallback, fs.ErrPermission):
		fail("fallback %v is not a permission error", fallback)
	case !strings.Contains(fallback.Error(), "CAP_BPF"):
		fail("fallback %q does not name the capabilities", fallback)
	case w.Sensor() != SensorProcfs:
		fail("Sensor() = %q, want procfs", w.Sensor())
	}
	fmt.Printf("fallback: %v\n", fallback)
}

// TestWatchersSeeOtherNetns: a client in a network namespace the test
// creates connects to a listener in that namespace; both sensors report it
// with the client's PID (the procfs one by reading that namespace's table).
func TestWatchersSeeOtherNetns(t *testing.T) {
	requireRoot(t)
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox (Debian busybox-static) is needed: %v", err)
	}
	for _, sensor := range []string{SensorEBPF, SensorProcfs} {
		t.Run(sensor, func(t *testing.T) {
			w, fallback := New(Options{ForceProcfs: sensor == SensorProcfs, Interval: 50 * time.Millisecond, Log: testLogger(t)})
			if w.Sensor() != sensor {
				t.Fatalf("Sensor() = %q, want %q (fallback: %v)", w.Sensor(), sensor, fallback)
			}
			dst := netip.MustParseAddrPort("127.0.0.23:4000")
			col := newCollector(dst)
			runWatcher(t, w, col.emit)

			// Once the listener is up, the shell becomes the client, which
			// holds the connection open while stdin (ours) stays open.
			nc := applet(t, "nc")
			script := fmt.Sprintf(`%[1]s ip link set lo up
%[1]s sleep 1000 | %[1]s nc -l -p 4000 >/dev/null &
until %[1]s grep -q ':0FA0 0*:0000 0A' /proc/net/tcp /proc/net/tcp6; do %[1]s sleep 0.05; done
exec %[2]s -w 2 127.0.0.23 4000`, bb, nc)
			sh := exec.Command(bb, "sh", "-c", script)
			sh.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Setpgid: true}
			stdin, err := sh.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := sh.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				stdin.Close()
				syscall.Kill(-sh.Process.Pid, syscall.SIGKILL)
				sh.Wait()
			})

			deadline := time.After(60 * time.Second)
			for {
				if conn, ok := col.find(sh.Process.Pid); ok {
					if conn.Comm != "nc" || conn.PPID != os.Getpid() || conn.Cmdline != nc+" -w 2 127.0.0.23 4000" {
						t.Errorf("Conn = %+v, want comm nc, parent %d and its command line", conn, os.Getpid())
					}
					mine, _ := os.Readlink("/proc/self/ns/net")
					theirs, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", conn.PID))
					if err != nil || theirs == mine {
						t.Errorf("client's netns %q (%v), want one other than the test's %q", theirs, err, mine)
					}
					return
				}
				select {
				case <-col.ch:
				case <-time.After(100 * time.Millisecond):
				case <-deadline:
					t.Fatalf("no connection from pid %d to %s reported in 60s", sh.Process.Pid, dst)
				}
			}
		})
	}
}

// tracefsChildEnv marks the re-executed test binary of
// TestTracefsMountedOnlyWhileLoading.
const tracefsChildEnv = "BUILDGUARD_TRACEFS_CHILD"

// On a host where tracefs is not mounted, the eBPF sensor mounts it to
// load and attach, and unmounts it after: the agent leaves no mount
// behind. The test runs itself again in a private mount namespace (so the
// host's mounts are untouched) with every tracefs unmounted there.
func TestTracefsMountedOnlyWhileLoading(t *testing.T) {
	requireRoot(t)
	if os.Getenv(tracefsChildEnv) == "" {
		if _, err := exec.LookPath("unshare"); err != nil {
			t.Skip("unshare (util-linux) is needed")
		}
		cmd := exec.Command("unshare", "--mount", "--propagation", "private",
			os.Args[0], "-test.run=^TestTracefsMountedOnlyWhileLoading$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), tracefsChildEnv+"=1")
		out, err := cmd.CombinedOutput()
		if err == nil && strings.Contains(string(out), "--- SKIP") {
			t.Skipf("skipped in the mount namespace:\n%s", out)
		}
		if err != nil || !strings.Contains(string(out), "--- PASS") {
			t.Fatalf("in a private mount namespace: %v\n%s", err, out)
		}
		return
	}
	for range 10 {
		dir, err := tracefsDir()
		if err != nil {
			break
		}
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Skipf("cannot unmount tracefs at %s: %v", dir, err)
		}
	}
	if dir, err := tracefsDir(); err == nil {
		t.Skipf("tracefs still mounted at %s", dir)
	}
	w, fallback := New(Options{Log: testLogger(t)})
	if fallback != nil {
		t.Fatalf("eBPF sensor without tracefs mounted: %v", fallback)
	}
	if dir, err := tracefsDir(); err == nil {
		t.Errorf("tracefs left mounted at %s after New", dir)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	if err := w.Run(ctx, func(Conn) {}); err != nil {
		t.Errorf("Run: %v", err)
	}
	if dir, err := tracefsDir(); err == nil {
		t.Errorf("tracefs left mounted at %s after Run", dir)
	}
}
