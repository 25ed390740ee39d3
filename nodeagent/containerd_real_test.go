package nodeagent

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"buildguard.dev/buildguard/internal/testregistry"
)

// realContainerd is a containerd the test started, with its own root,
// state and socket.
type realContainerd struct {
	t      *testing.T
	bin    string
	config string
	sock   string
	logf   *os.File
	cmd    *exec.Cmd
	done   chan struct{}
}

// newRealContainerd configures a containerd; start starts it.
func newRealContainerd(t *testing.T) *realContainerd {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd")
	}
	bin, err := exec.LookPath("containerd")
	if err != nil {
		t.Skip("containerd not installed")
	}
	if _, err := exec.LookPath("ctr"); err != nil {
		t.Skip("ctr not installed")
	}
	// A unix socket's path must fit 108 bytes: t.TempDir's can be longer.
	sockDir, err := os.MkdirTemp("/tmp", "bgctr")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	dir := t.TempDir()
	c := &realContainerd{t: t, bin: bin, sock: filepath.Join(sockDir, "c.sock"), config: filepath.Join(dir, "config.toml")}
	// Only what images and content need: no CRI, no snapshotters that
	// cannot work here, no /opt/containerd (the opt plugin's default).
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[grpc]
  address = %q
[ttrpc]
  address = %q
[debug]
  address = ""
`, filepath.Join(dir, "root"), filepath.Join(sockDir, "state"), c.sock, c.sock+".ttrpc")
	if err := os.WriteFile(c.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	if c.logf, err = os.Create(filepath.Join(dir, "containerd.log")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.stop()
		c.logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(c.logf.Name())
			t.Logf("containerd's log:\n%s", tail(string(b), 8000))
		}
	})
	return c
}

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[len(s)-n:]
}

func (c *realContainerd) start() {
	c.t.Helper()
	c.cmd = exec.Command(c.bin, "--config", c.config)
	c.cmd.Stdout, c.cmd.Stderr = c.logf, c.logf
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	done := make(chan struct{})
	c.done = done
	go func(cmd *exec.Cmd) { cmd.Wait(); close(done) }(c.cmd)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := exec.Command("ctr", "--address", c.sock, "--timeout", "2s", "version").CombinedOutput()
		if err == nil {
			return
		}
		select {
		case <-done:
			c.t.Fatalf("containerd exited at start: %s", out)
		default:
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("containerd did not answer: %v: %s", err, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *realContainerd) stop() {
	if c.cmd == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
	c.cmd = nil
}

// importImage writes img as a docker-archive tarball tagged ref and
// imports it into namespace default with ctr, without unpacking (no
// snapshotter mounts).
func (c *realContainerd) importImage(ref string, img v1.Image) {
	c.t.Helper()
	tag, err := name.NewTag(ref)
	if err != nil {
		c.t.Fatal(err)
	}
	f := filepath.Join(c.t.TempDir(), "image.tar")
	if err := tarball.WriteToFile(f, tag, img); err != nil {
		c.t.Fatal(err)
	}
	out, err := exec.Command("ctr", "--address", c.sock, "--timeout", "20s", "-n", "default", "images", "import", "--no-unpack", f).CombinedOutput()
	if err != nil {
		c.t.Fatalf("ctr images import: %v: %s", err, out)
	}
}

// gatedContainerd holds back the watcher's subscriptions while gate is
// closed, and says when one opened.
type gatedContainerd struct {
	*Containerd
	mu     sync.Mutex
	gate   chan struct{} // nil: open
	opened chan struct{} // gets a value each time a subscription opens
	// types are the type URLs of the image events received, decoded.
	types map[string]int
}

func (g *gatedContainerd) Subscribe(ctx context.Context, filters []string, fn func(*ctrEnvelope) error) error {
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return g.Containerd.Subscribe(ctx, filters, func(e *ctrEnvelope) error {
		if e == nil {
			select {
			case g.opened <- struct{}{}:
			default:
			}
		} else if _, err := imageEventName(e.Event); err == nil {
			g.mu.Lock()
			g.types[e.Event.GetTypeUrl()]++
			g.mu.Unlock()
		}
		return fn(e)
	})
}

func (g *gatedContainerd) hold() chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = make(chan struct{})
	return g.gate
}

// TestContainerdWatcherReal runs the watcher against a real containerd:
// an image imported is reported as a build with its config digest, time
// and steps; one imported while the watcher is disconnected (containerd
// restarted) is found on reconnect; one imported after is seen live.
func TestContainerdWatcherReal(t *testing.T) {
	c := newRealContainerd(t)
	client, err := NewContainerd("unix://" + c.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	g := &gatedContainerd{Containerd: client, opened: make(chan struct{}, 1), types: map[string]int{}}
	logs := &logBuffer{t: t}
	w := &ContainerdWatcher{Client: g, Socket: c.sock, Namespaces: []string{"default"}, MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second,
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	ctx, cancel := context.WithCancel(t.Context())
	out := make(chan BuildInfo, 16)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, out) }()
	defer func() {
		cancel()
		<-done
	}()
	waitOpened := func() {
		t.Helper()
		select {
		case <-g.opened:
		case <-time.After(20 * time.Second):
			t.Fatal("the watcher did not subscribe")
		}
	}
	platform := &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	check := func(ref string, created time.Time, steps []string) {
		t.Helper()
		img := testregistry.Build(t, testregistry.Image{Created: created, Steps: steps, Platform: platform})
		cfgDigest, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}
		c.importImage(ref, img)
		select {
		case b := <-out:
			if b.ImageID != cfgDigest.String() || b.Tool != "containerd" || !b.Started.Equal(created) ||
				!slices.Equal(b.Steps, steps) || !slices.Contains(b.Tags, ref) {
				t.Errorf("build = %+v, want image %s, tool containerd, started %s, steps %q, tag %s", b, cfgDigest, created, steps, ref)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no build reported for %s", ref)
		}
	}

	// The watcher starts before containerd: it waits for the socket,
	// and says so once.
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "no containerd socket") {
		if time.Now().After(deadline) {
			t.Fatal("the watcher did not say that the socket is missing")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if n := strings.Count(logs.String(), "no containerd socket"); n != 1 {
		t.Errorf("the missing socket was logged %d times, want once", n)
	}
	c.start()
	waitOpened()
	now := time.Now().UTC().Truncate(time.Second)
	check("local.test/one:1", now.Add(-time.Minute), []string{"/bin/sh -c wget -O /payload http://127.0.0.23/payload"})

	// An old image is not a build: nothing is reported for it (checked
	// with the next image, which must be the next build).
	old := testregistry.Build(t, testregistry.Image{Created: now.Add(-30 * 24 * time.Hour), Steps: []string{"RUN old"}, Platform: platform})
	c.importImage("local.test/old:1", old)

	// containerd restarts; while the watcher is held back, an image is
	// imported: the watcher finds it when it subscribes again.
	release := g.hold()
	c.stop()
	c.start()
	img2 := testregistry.Build(t, testregistry.Image{Created: now, Steps: []string{"RUN make", "COPY out /app"}, Platform: platform})
	cfg2, _ := img2.ConfigName()
	c.importImage("local.test/two:1", img2)
	close(release)
	select {
	case b := <-out:
		if b.ImageID != cfg2.String() || !slices.Equal(b.Steps, []string{"RUN make", "COPY out /app"}) {
			t.Errorf("build after the restart = %+v, want image %s", b, cfg2)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the image imported while disconnected was not reported")
	}
	waitOpened()
	check("local.test/three:1", now, []string{"RUN three"})

	// A fresh image pulled from a registry (an index, as BuildKit pushes)
	// is not a build: containerd labelled its content with the registry.
	reg := testregistry.New(t)
	reg.PushIndex(t, "pulled:1", false, testregistry.Build(t, testregistry.Image{Created: now, Steps: []string{"RUN pulled"}, Platform: platform}))
	pull := exec.Command("ctr", "--address", c.sock, "--timeout", "20s", "-n", "default", "images", "pull", "--plain-http", reg.Host+"/pulled:1")
	pull.Env = append(os.Environ(), "NO_PROXY=127.0.0.1", "no_proxy=127.0.0.1")
	if out, err := pull.CombinedOutput(); err != nil {
		t.Fatalf("ctr images pull: %v: %s", err, out)
	}
	want := fmt.Sprintf(`msg="containerd image pulled, not built" namespace=default image=%s/pulled:1`, reg.Host)
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the pulled image was not found to be pulled (log %q)", want)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "containerd.io/distribution.source.") {
		t.Error("the pull was not told by containerd's distribution.source label")
	}

	// The image events came through the subscription and decoded (the
	// catch-up lists alone could find the builds above).
	if strings.Contains(logs.String(), "undecodable containerd image event") {
		t.Error("containerd sent an image event the watcher could not decode")
	}
	g.mu.Lock()
	t.Logf("image events decoded, by type: %v", g.types)
	if len(g.types) == 0 {
		t.Error("no image event decoded")
	}
	g.mu.Unlock()

	// Neither the old nor the pulled image was reported.
	select {
	case b := <-out:
		t.Errorf("unexpected build %+v", b)
	default:
	}
}

// logBuffer keeps a log and passes it on to t.
type logBuffer struct {
	t  *testing.T
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Write(p)
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestContainerdWatcherRetagIsNotABuild: an image made elsewhere and
// imported while no agent watched, then tagged again (ctr images tag, as
// nerdctl tag does) is not reported as a build; an image imported while
// the agent watches is, once, however often it is tagged.
func TestContainerdWatcherRetagIsNotABuild(t *testing.T) {
	c := newRealContainerd(t)
	c.start()
	client, err := NewContainerd("unix://" + c.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	platform := &v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	now := time.Now().UTC().Truncate(time.Second)
	c.importImage("local.test/ci:1", testregistry.Build(t, testregistry.Image{Created: now.Add(-time.Minute), Steps: []string{"RUN ci"}, Platform: platform}))
	tag := func(src, dst string) {
		t.Helper()
		out, err := exec.Command("ctr", "--address", c.sock, "--timeout", "20s", "-n", "default", "images", "tag", src, dst).CombinedOutput()
		if err != nil {
			t.Fatalf("ctr images tag: %v: %s", err, out)
		}
	}
	time.Sleep(10 * time.Millisecond) // the import is before the watch's start

	logs := &logBuffer{t: t}
	w := &ContainerdWatcher{Client: client, Socket: c.sock, Namespaces: []string{"default"}, Replay: time.Millisecond,
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	ctx, cancel := context.WithCancel(t.Context())
	out := make(chan BuildInfo, 16)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, out) }()
	defer func() {
		cancel()
		<-done
	}()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(logs.String(), "containerd images changed while not watching") {
		if time.Now().After(deadline) {
			t.Fatal("the watcher did not catch up")
		}
		time.Sleep(50 * time.Millisecond)
	}

	tag("local.test/ci:1", "local.test/ci:prod")
	fresh := testregistry.Build(t, testregistry.Image{Created: now, Steps: []string{"RUN make"}, Platform: platform})
	cfg, _ := fresh.ConfigName()
	c.importImage("local.test/new:1", fresh)
	tag("local.test/new:1", "local.test/new:prod")
	select {
	case b := <-out:
		if b.ImageID != cfg.String() {
			t.Errorf("build = %+v, want the image imported while watched (%s): the retag of the image already there was reported", b, cfg)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the image imported while watched was not reported")
	}
	// The new tag is examined within a tick (250ms) of its event.
	select {
	case b := <-out:
		t.Errorf("unexpected build %+v", b)
	case <-time.After(time.Second):
	}
}
