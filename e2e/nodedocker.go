package e2e

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
)

// nodeCacheDockerRoot is the data root of the node's Docker Engine. It
// outlives the node, as a build cache does: the image built from the
// Dockerfile the next run takes from its BuildKit cache (modules, compiled
// packages, base images) instead of building it anew. Remove it to start
// cold; nothing else is kept between runs.
func nodeCacheDockerRoot() string {
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = "/var/tmp"
	}
	return filepath.Join(dir, "buildguard-e2e", "docker")
}

// StartDocker starts the node's Docker Engine (Debian's docker.io) on
// /var/run/docker.sock beside containerd, as many nodes have one: the
// node agent watches it, pods that mount its socket build with it, and the
// e2e tests build buildguard's image with its BuildKit. Its containers run
// in the node's cgroup, on the host's network (no bridge, no iptables
// rules of its own); it pulls from and pushes to the node's registry.
func (n *Node) StartDocker(ctx context.Context) error {
	dir := filepath.Join(NodeDir, "docker")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.MkdirAll(nodeCacheDockerRoot(), 0o700); err != nil {
		return err
	}
	d := &Dockerd{Dir: dir, sock: dockerSocket, Host: "unix://" + dockerSocket, logPath: filepath.Join(NodeDir, "logs", "dockerd.log")}
	d.client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", dockerSocket)
	}}}
	d.args = []string{"--iptables=false", "--ip6tables=false", "--bridge=none", "--userland-proxy=false",
		"--storage-driver=overlay2", "--data-root=" + nodeCacheDockerRoot(), "--exec-root=" + filepath.Join(dir, "e"),
		"--pidfile=" + filepath.Join(dir, "dockerd.pid"), "--cgroup-parent=/" + nodeCgroup + "/docker",
		"--insecure-registry=" + NodeRegistry, "-H", d.Host}
	if err := d.start(ctx); err != nil {
		return err
	}
	n.Docker = d
	n.procs = append(n.procs, d.Proc)
	return n.state.addProc(d.Proc)
}
