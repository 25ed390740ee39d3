package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"

	"buildguard.dev/buildguard/bench/internal/reviewload"
	"buildguard.dev/buildguard/internal/benchreview"
	"buildguard.dev/buildguard/server"
)

// target is a webhook process under load.
type target struct {
	name string
	url  string // of /validate
	cmd  *exec.Cmd
	// logFile is where the process's stderr goes, as a container
	// runtime would collect it; "" for do-nothing.
	logFile string
	// debug is the --debug-listen address, or "".
	debug string
}

// pid is the target's process id.
func (t *target) pid() int { return t.cmd.Process.Pid }

// logBytes is the size of the target's log so far.
func (t *target) logBytes() int64 {
	if t.logFile == "" {
		return 0
	}
	fi, err := os.Stat(t.logFile)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// stop ends the target with SIGTERM, as a kubelet does, and waits for it
// for up to 10s before killing it.
func (t *target) stop() {
	if t.cmd == nil || t.cmd.Process == nil {
		return
	}
	t.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { t.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.cmd.Process.Kill()
		<-done
	}
}

// env is what every run shares: the directory, the registry, the
// certificate and the client.
type env struct {
	cfg      config
	dir      string
	registry *httptest.Server
	// blobs is the registry's blob store, which -cache-fill writes
	// configs into directly; requests counts what the registry served.
	blobs    ggcrregistry.BlobHandler
	requests *registryCounter
	policy   string // the policy file
	bin      string // the buildguard binary
	certFile string
	keyFile  string
	client   *http.Client
	tr       *http.Transport
	images   []reviewload.Image
	bodies   map[int]*benchreview.Body // by containers
	targets  []*target                 // buildguard ones first, do-nothing last
	uids     benchreview.UIDs
}

func (e *env) close() {
	if e.tr != nil {
		e.tr.CloseIdleConnections()
	}
	for _, t := range e.targets {
		t.stop()
	}
	if e.registry != nil {
		e.registry.Close()
	}
	if e.dir != "" && !e.cfg.keep {
		os.RemoveAll(e.dir)
	}
}

func newEnv(ctx context.Context, cfg config, out io.Writer) (_ *env, err error) {
	e := &env{cfg: cfg, bodies: map[int]*benchreview.Body{}}
	defer func() {
		if err != nil {
			e.close()
		}
	}()
	if e.dir, err = os.MkdirTemp("", "buildguard-shipped-"); err != nil {
		return nil, err
	}
	var pool *x509.CertPool
	if e.certFile, e.keyFile, pool, err = reviewload.WriteCertificate(e.dir); err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true) // as the kube-apiserver calls admission webhooks
	maxConc := 0
	for _, c := range cfg.concurrency {
		maxConc = max(maxConc, c)
	}
	e.tr = &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		Protocols:           &protos,
		MaxIdleConns:        4 * maxConc,
		MaxIdleConnsPerHost: maxConc,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
		DisableCompression:  true,
	}
	e.client = &http.Client{Transport: e.tr, Timeout: 10 * time.Second}

	e.blobs = ggcrregistry.NewInMemoryBlobHandler()
	e.requests = &registryCounter{inner: ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)), ggcrregistry.WithBlobHandler(e.blobs))}
	e.registry = httptest.NewServer(e.requests)
	host := strings.TrimPrefix(e.registry.URL, "http://")
	n := 1
	if !cfg.sameImage {
		for _, c := range cfg.containers {
			n = max(n, c)
		}
	}
	for i := range n {
		img, err := reviewload.PushImage(ctx, fmt.Sprintf("%s/bench/app-%d:v1", host, i))
		if err != nil {
			return nil, fmt.Errorf("pushing an image: %w", err)
		}
		e.images = append(e.images, img)
	}
	for _, c := range cfg.containers {
		if e.bodies[c], err = newBody(e.images, c, cfg.sameImage); err != nil {
			return nil, err
		}
	}
	e.policy = filepath.Join(e.dir, "policy.yaml")
	if err := os.WriteFile(e.policy, []byte(reviewload.PolicyYAML), 0o600); err != nil {
		return nil, err
	}

	e.bin = cfg.buildguard
	if e.bin == "" {
		e.bin = filepath.Join(e.dir, "buildguard")
		fmt.Fprintf(out, "- building %s (as `make build` does)\n", e.bin)
		cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=bench", "-o", e.bin, "./cmd/buildguard")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("building buildguard: %w", err)
		}
	}
	if cfg.cacheFill > 0 {
		// Each round starts its own processes (see runCacheFill).
		return e, nil
	}
	for _, sp := range e.targetSpecs() {
		t, err := e.startBuildguard(ctx, sp.name, sp.bin, sp.args)
		if err != nil {
			return nil, err
		}
		e.targets = append(e.targets, t)
	}
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	t, err := e.startNothing(ctx, self)
	if err != nil {
		return nil, err
	}
	e.targets = append(e.targets, t)
	return e, nil
}

// targetSpec is how one buildguard target is started.
type targetSpec struct {
	name, bin string
	args      []string
}

// targetSpecs are the buildguard targets of -targets, each beside its
// -baseline twin when there is one.
func (e *env) targetSpecs() []targetSpec {
	bins := []struct{ suffix, path string }{{"", e.bin}}
	if e.cfg.baseline != "" {
		bins = append(bins, struct{ suffix, path string }{"-baseline", e.cfg.baseline})
	}
	var out []targetSpec
	for _, name := range e.cfg.targets {
		for _, b := range bins {
			full := "buildguard-" + name + b.suffix
			args := []string{"serve", "--config", e.policy, "--tls-cert-file", e.certFile, "--tls-private-key-file", e.keyFile}
			if name == "sqlite" {
				args = append(args, "--store-sqlite", filepath.Join(e.dir, full+".db"))
			}
			if b.suffix == "" {
				args = append(args, e.cfg.extraArgs...)
			}
			out = append(out, targetSpec{name: full, bin: b.path, args: args})
		}
	}
	return out
}

// registryCounter counts the manifest and blob GETs a registry serves.
type registryCounter struct {
	inner http.Handler
	gets  atomic.Int64
}

func (c *registryCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && (strings.Contains(r.URL.Path, "/manifests/") || strings.Contains(r.URL.Path, "/blobs/")) {
		c.gets.Add(1)
	}
	c.inner.ServeHTTP(w, r)
}

// freePort returns a loopback address nothing listens on at the moment.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func (e *env) startBuildguard(ctx context.Context, name, bin string, args []string) (*target, error) {
	addr, err := freePort()
	if err != nil {
		return nil, err
	}
	args = append(args, "--listen", addr)
	t := &target{name: name, url: "https://" + addr + "/validate", logFile: filepath.Join(e.dir, name+".log")}
	if e.cfg.profileDir != "" || e.cfg.cacheFill > 0 {
		if t.debug, err = freePort(); err != nil {
			return nil, err
		}
		args = append(args, "--debug-listen", t.debug)
	}
	lf, err := os.Create(t.logFile)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	t.cmd = exec.Command(bin, args...)
	t.cmd.Stdout, t.cmd.Stderr = lf, lf
	// As in a pod: no cluster (KUBERNETES_SERVICE_HOST unset) and no
	// GOMAXPROCS or GOGC of ours.
	t.cmd.Env = cleanEnv()
	if err := t.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	if err := e.waitHealthy(ctx, t); err != nil {
		t.stop()
		b, _ := os.ReadFile(t.logFile)
		return nil, fmt.Errorf("%w; its log:\n%.2000s", err, b)
	}
	return t, nil
}

// cleanEnv is this process's environment without the Go runtime and
// Kubernetes variables that would change how a target runs.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "GOMAXPROCS", k == "GOGC", k == "GOMEMLIMIT", k == "GODEBUG", strings.HasPrefix(k, "KUBERNETES_"):
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (e *env) startNothing(ctx context.Context, self string) (*target, error) {
	t := &target{name: "do-nothing"}
	t.cmd = exec.Command(self, "nothing", "-tls-cert-file", e.certFile, "-tls-private-key-file", e.keyFile)
	t.cmd.Env = cleanEnv()
	t.cmd.Stderr = os.Stderr
	stdout, err := t.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := t.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting do-nothing: %w", err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.stop()
		return nil, fmt.Errorf("do-nothing did not say its address: %w", err)
	}
	go io.Copy(io.Discard, stdout)
	t.url = "https://" + strings.TrimSpace(line) + "/validate"
	if err := e.waitHealthy(ctx, t); err != nil {
		t.stop()
		return nil, err
	}
	return t, nil
}

func (e *env) waitHealthy(ctx context.Context, t *target) error {
	health := strings.TrimSuffix(t.url, "/validate") + "/healthz"
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, health, nil)
		if err != nil {
			return err
		}
		resp, err := e.client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not healthy after 20s: %v", t.name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// processCPU returns the CPU time (user and system) process pid has used,
// from /proc/pid/stat.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("unexpected /proc/pid/stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc/pid/stat")
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, err
	}
	// USER_HZ is 100 on Linux.
	return time.Duration(ut+st) * 10 * time.Millisecond, nil
}

// processRSS returns the resident set of process pid, from
// /proc/pid/status, in bytes.
func processRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS in /proc/pid/status")
}

// loadAverage returns the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// serveNothing is the do-nothing webhook's process: server.Server on a
// loopback port it prints on stdout, with reviewload.DoNothing at /validate.
func serveNothing(args []string) error {
	fs := flag.NewFlagSet("nothing", flag.ContinueOnError)
	cert := fs.String("tls-cert-file", "", "PEM certificate")
	key := fs.String("tls-private-key-file", "", "PEM private key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	mux := http.NewServeMux()
	mux.Handle("/validate", reviewload.DoNothing{})
	s := &server.Server{Listener: ln, CertFile: *cert, KeyFile: *key, Handler: mux, Log: slog.New(slog.DiscardHandler)}
	return s.Run(ctx)
}
