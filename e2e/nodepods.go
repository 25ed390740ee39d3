package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Container is a running container of a pod on the node, as the host sees
// it: its cgroup and processes.
type Container struct {
	Pod, Name, ID string
	// Cgroup is its directory in the memory hierarchy (cgroup v1) or the
	// unified one (v2).
	Cgroup string
}

// PodContainer finds container name of pod namespace/pod on the node.
func (n *Node) PodContainer(ctx context.Context, namespace, pod, name string) (*Container, error) {
	out, err := n.Kubectl(ctx, nil, "-n", namespace, "get", "pod", pod, "-o",
		fmt.Sprintf(`jsonpath={.status.containerStatuses[?(@.name==%q)].containerID}`, name))
	if err != nil {
		return nil, err
	}
	id := strings.TrimPrefix(strings.TrimSpace(out), "containerd://")
	if id == "" {
		return nil, fmt.Errorf("pod %s/%s has no running container %s", namespace, pod, name)
	}
	c := &Container{Pod: namespace + "/" + pod, Name: name, ID: id}
	for _, m := range cgroupMounts() {
		if filepath.Base(m) != "memory" && len(cgroupMounts()) > 1 {
			continue
		}
		filepath.WalkDir(filepath.Join(m, nodeCgroup), func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() && filepath.Base(path) == id {
				c.Cgroup = path
				return filepath.SkipAll
			}
			return nil
		})
	}
	if c.Cgroup == "" {
		return nil, fmt.Errorf("no cgroup of container %s (%s)", name, id)
	}
	return c, nil
}

// WorkingSet is the container's memory as the kubelet counts it (and
// kubectl top shows it): usage without the inactive page cache.
func (c *Container) WorkingSet() (int64, error) {
	usageFile, statKey := "memory.usage_in_bytes", "total_inactive_file"
	if _, err := os.Stat(filepath.Join(c.Cgroup, usageFile)); err != nil {
		usageFile, statKey = "memory.current", "inactive_file" // cgroup v2
	}
	b, err := os.ReadFile(filepath.Join(c.Cgroup, usageFile))
	if err != nil {
		return 0, err
	}
	usage, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, err
	}
	f, err := os.Open(filepath.Join(c.Cgroup, "memory.stat"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), " ")
		if k == statKey {
			inactive, _ := strconv.ParseInt(v, 10, 64)
			return usage - inactive, nil
		}
	}
	return usage, sc.Err()
}

// PIDs returns the host PIDs of the container's processes.
func (c *Container) PIDs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(c.Cgroup, "cgroup.procs"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			out = append(out, pid)
		}
	}
	return out, nil
}

// ProcessIdentity is what the host says about a container's process: its
// user and whether its root filesystem is mounted read-only.
type ProcessIdentity struct {
	UID, GID   int
	ReadOnlyFS bool
}

// Identity reads pid's user and root mount from /proc.
func Identity(pid int) (ProcessIdentity, error) {
	var id ProcessIdentity
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return id, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 && f[0] == "Uid:" {
			id.UID, _ = strconv.Atoi(f[1])
		}
		if len(f) > 1 && f[0] == "Gid:" {
			id.GID, _ = strconv.Atoi(f[1])
		}
	}
	mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
	if err != nil {
		return id, err
	}
	for _, line := range strings.Split(string(mi), "\n") {
		f := strings.Fields(line)
		if len(f) > 5 && f[4] == "/" {
			id.ReadOnlyFS = strings.HasPrefix(f[5], "ro")
		}
	}
	return id, nil
}

// DockerCLIImage is an image with Debian docker.io's docker command (and
// the C library it links), busybox and nothing else: what a pod that
// builds on its node with the node's Docker socket runs.
func DockerCLIImage() (v1.Image, error) {
	files, err := busyboxFiles()
	if err != nil {
		return nil, err
	}
	files = append(files, imageFile{Name: "usr", Dir: true, Mode: 0o755}, imageFile{Name: "usr/bin", Dir: true, Mode: 0o755},
		imageFile{Name: "usr/bin/docker", Src: "/usr/bin/docker", Mode: 0o755})
	out, err := exec.Command("ldd", "/usr/bin/docker").Output()
	if err != nil {
		return nil, fmt.Errorf("ldd /usr/bin/docker: %w", err)
	}
	dirs := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		// "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
		// "/lib64/ld-linux-x86-64.so.2 (0x…)"
		f := strings.Fields(line)
		var lib string
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			lib = f[2]
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			lib = f[0]
		default:
			continue
		}
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			return nil, err
		}
		for d := filepath.Dir(lib); d != "/" && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
			files = append(files, imageFile{Name: strings.TrimPrefix(d, "/"), Dir: true, Mode: 0o755})
		}
		files = append(files, imageFile{Name: strings.TrimPrefix(lib, "/"), Src: real, Mode: 0o755})
	}
	return makeImage(files, v1.Config{Env: []string{"PATH=/usr/bin:/bin", "DOCKER_CONFIG=/tmp/.docker"}, Cmd: []string{"/bin/sh"}},
		time.Now(), "COPY docker /usr/bin/docker")
}
