package nodeagent

import (
	"os"
	"path/filepath"
	"testing"
)

func TestShimContainer(t *testing.T) {
	root := t.TempDir()
	id := hexID('7')
	procs := map[string]string{
		"100": "/usr/bin/containerd-shim-runc-v2\x00-namespace\x00moby\x00-id\x00" + id + "\x00-address\x00/run/containerd/containerd.sock\x00",
		"101": "containerd-shim-runc-v2\x00-namespace\x00k8s.io\x00-id\x00pod-sandbox\x00",
		"102": "/usr/bin/dockerd\x00-id\x00" + id + "\x00",
		"103": "containerd-shim-runc-v2\x00-id\x00",
	}
	for pid, cmdline := range procs {
		os.MkdirAll(filepath.Join(root, pid), 0o755)
		os.WriteFile(filepath.Join(root, pid, "cmdline"), []byte(cmdline), 0o644)
	}
	for _, tt := range []struct {
		ppid int
		want string
	}{{100, id}, {101, ""}, {102, ""}, {103, ""}, {104, ""}, {1, ""}, {0, ""}} {
		if got := shimContainer(root, tt.ppid); got != tt.want {
			t.Errorf("shimContainer(%d) = %q, want %q", tt.ppid, got, tt.want)
		}
	}
}
