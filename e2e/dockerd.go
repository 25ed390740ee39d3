package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Dockerd is a Docker Engine (Debian's docker.io) the test starts for
// itself: its own data root, exec root, socket and containerd, no bridge
// and no iptables rules, the vfs storage driver. Builds use the host's
// network, so that their steps reach the test's loopback servers.
type Dockerd struct {
	Proc *Process
	// Host is unix:///…/docker.sock, for --docker-host.
	Host string
	Dir  string // everything of it lives here

	sock, logPath string
	client        *http.Client
	// args are dockerd's flags; nil: StartDockerd's.
	args []string
}

// StartDockerd starts dockerd with its files under a new short directory
// in /tmp (unix socket paths must stay under 108 bytes, which a test's
// TempDir does not promise), removed by Stop.
func StartDockerd(ctx context.Context, logPath string) (_ *Dockerd, err error) {
	if _, err := exec.LookPath("dockerd"); err != nil {
		return nil, fmt.Errorf("dockerd is not installed (Debian's docker.io): %w", err)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("dockerd needs root: run the e2e tests as root (make test does in CI)")
	}
	dir, err := os.MkdirTemp("/tmp", "bgd")
	if err != nil {
		return nil, err
	}
	d := &Dockerd{Dir: dir, sock: filepath.Join(dir, "docker.sock")}
	defer func() {
		if err != nil {
			d.Stop()
		}
	}()
	d.Host = "unix://" + d.sock
	d.client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", d.sock)
	}}}
	d.logPath = logPath
	return d, d.start(ctx)
}

// Restart stops dockerd (its containerd with it) and starts it again on
// the same socket and data, as an upgrade or a crash-restart would.
func (d *Dockerd) Restart(ctx context.Context) error {
	d.Proc.Stop()
	return d.start(ctx)
}

func (d *Dockerd) start(ctx context.Context) error {
	bin, err := exec.LookPath("dockerd")
	if err != nil {
		return err
	}
	args := d.args
	if args == nil {
		args = []string{"--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=vfs",
			"--data-root=" + filepath.Join(d.Dir, "d"), "--exec-root=" + filepath.Join(d.Dir, "e"),
			"--pidfile=" + filepath.Join(d.Dir, "dockerd.pid"), "-H", d.Host}
	}
	d.Proc, err = Start("dockerd", d.logPath, nil, bin, args...)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var v struct{ APIVersion string }
		if err := d.call(ctx, http.MethodGet, "/version", nil, "", &v); err == nil {
			return nil
		}
		if d.Proc.Exited() {
			return fmt.Errorf("dockerd exited:\n%s", d.Proc.Tail(3000))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dockerd not ready within 60s:\n%s", d.Proc.Tail(3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// call makes one API request; out, when not nil, receives the JSON answer.
func (d *Dockerd) call(ctx context.Context, method, path string, body io.Reader, contentType string, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://docker/v1.41"+path, body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("docker %s %s: %d %s", method, path, resp.StatusCode, b)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

// ImportBusybox imports a base image named ref ("local/busybox:1") holding
// /usr/bin/busybox (busybox-static) as /bin/busybox, with /bin/sh and
// /bin/wget linked to it.
func (d *Dockerd) ImportBusybox(ctx context.Context, ref string) error {
	bb, err := os.ReadFile("/usr/bin/busybox")
	if err != nil {
		return fmt.Errorf("busybox-static is not installed: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdrs := []tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777},
		{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))},
		{Name: "bin/sh", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777},
		{Name: "bin/wget", Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777},
	}
	for _, h := range hdrs {
		h.ModTime = time.Unix(0, 0)
		if err := tw.WriteHeader(&h); err != nil {
			return err
		}
		if h.Name == "bin/busybox" {
			tw.Write(bb)
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	repo, tag, _ := strings.Cut(ref, ":")
	q := url.Values{"fromSrc": {"-"}, "repo": {repo}, "tag": {tag}}
	return d.call(ctx, http.MethodPost, "/images/create?"+q.Encode(), &buf, "application/x-tar", nil)
}

// Build builds dockerfile (the only file of the context) as tag through
// POST /build, the classic builder, with the host's network; it returns
// the image ID.
func (d *Dockerd) Build(ctx context.Context, tag, dockerfile string) (string, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(dockerfile)), ModTime: time.Unix(0, 0)})
	tw.Write([]byte(dockerfile))
	if err := tw.Close(); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	q := url.Values{"t": {tag}, "networkmode": {"host"}, "rm": {"1"}, "forcerm": {"1"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://docker/v1.41/build?"+q.Encode(), &buf)
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-tar")
	resp, err := d.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return "", fmt.Errorf("docker build: %d %s", resp.StatusCode, b)
	}
	var id string
	var log strings.Builder
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct {
			Stream string
			Error  string
			Aux    struct{ ID string }
		}
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return "", fmt.Errorf("docker build: %w\n%s", err, log.String())
		}
		log.WriteString(m.Stream)
		if m.Error != "" {
			return "", fmt.Errorf("docker build: %s\n%s", m.Error, log.String())
		}
		if m.Aux.ID != "" {
			id = m.Aux.ID
		}
	}
	if id == "" {
		return "", fmt.Errorf("docker build: no image ID in the answer\n%s", log.String())
	}
	return id, nil
}

// Tag tags image src (a reference or an ID) as ref ("repo:tag"), as
// docker tag does.
func (d *Dockerd) Tag(ctx context.Context, src, ref string) error {
	repo, tag, err := splitTag(ref)
	if err != nil {
		return err
	}
	q := url.Values{"repo": {repo}, "tag": {tag}}
	return d.call(ctx, http.MethodPost, "/images/"+url.PathEscape(src)+"/tag?"+q.Encode(), nil, "", nil)
}

// Pull pulls ref ("host:port/repo:tag"), as docker pull does; dockerd
// speaks plain HTTP to registries on 127.0.0.0/8.
func (d *Dockerd) Pull(ctx context.Context, ref string) error {
	repo, tag, err := splitTag(ref)
	if err != nil {
		return err
	}
	q := url.Values{"fromImage": {repo}, "tag": {tag}}
	return d.stream(ctx, "/images/create?"+q.Encode(), nil, "")
}

// splitTag splits "host:port/repo:tag" at the tag's colon.
func splitTag(ref string) (repo, tag string, err error) {
	i := strings.LastIndex(ref, ":")
	if i < 0 || i < strings.LastIndex(ref, "/") {
		return "", "", fmt.Errorf("%q: want repo:tag", ref)
	}
	return ref[:i], ref[i+1:], nil
}

// Load loads a tarball as docker save writes it, as docker load does.
func (d *Dockerd) Load(ctx context.Context, tarball io.Reader) error {
	return d.stream(ctx, "/images/load?quiet=1", tarball, "application/x-tar")
}

// stream POSTs to path and reads the daemon's JSON progress messages to
// the end; an "error" message fails it.
func (d *Dockerd) stream(ctx context.Context, path string, body io.Reader, contentType string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://docker/v1.41"+path, body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("docker POST %s: %d %s", path, resp.StatusCode, b)
	}
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct{ Error, Stream, Status string }
		if err := dec.Decode(&m); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("docker POST %s: %w", path, err)
		}
		if m.Error != "" {
			return fmt.Errorf("docker POST %s: %s", path, m.Error)
		}
	}
}

// Image returns image ref as docker save writes it, read back with
// go-containerregistry: its config digest is the Docker image ID.
func (d *Dockerd) Image(ctx context.Context, ref string) (v1.Image, error) {
	tag, err := name.NewTag(ref)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(d.Dir, strings.NewReplacer("/", "_", ":", "_").Replace(ref)+".tar")
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/v1.41/images/"+url.PathEscape(ref)+"/get", nil)
	if err != nil {
		return nil, err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("docker save %s: %d %s", ref, resp.StatusCode, b)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		return nil, err
	}
	return tarball.ImageFromPath(path, &tag)
}

// Stop stops dockerd and its containerd, kills shims left behind, unmounts
// what it mounted and removes its directory.
func (d *Dockerd) Stop() {
	if d.Proc != nil {
		d.Proc.Stop()
	}
	// containerd-shim-runc-v2 outlives containerd by design; ours name
	// our exec root in their command line.
	for _, pid := range processesMentioning(d.Dir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	for _, m := range mountsUnder(d.Dir) {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
	os.RemoveAll(d.Dir)
}

// processesMentioning returns the PIDs whose command line contains s.
func processesMentioning(s string) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}

// mountsUnder returns the mount points under dir, deepest first.
func mountsUnder(dir string) []string {
	var out []string
	for _, fields := range mountinfo() {
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			out = append(out, fields[4])
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// mountinfo returns the fields of each line of /proc/self/mountinfo
// (the mount point is the fifth), or nothing when it cannot be read.
func mountinfo() [][]string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out [][]string
	for _, line := range strings.Split(string(b), "\n") {
		if fields := strings.Fields(line); len(fields) > 0 {
			out = append(out, fields)
		}
	}
	return out
}

// LoadImage loads img into the Engine's image store as ref (docker load),
// streaming the tarball as it is written.
func (d *Dockerd) LoadImage(ctx context.Context, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(tarball.Write(tag, img, pw)) }()
	defer pr.Close()
	return d.Load(ctx, pr)
}
