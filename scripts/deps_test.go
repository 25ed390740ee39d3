// Package scripts holds the project's shell scripts; its tests run them.
package scripts

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDepsCheck runs scripts/deps.sh --check against a root directory of
// its own: on an empty machine it stops at once, naming every package and
// the command that installs them; what is there drops off the list; a
// dynamically linked busybox does not count for busybox-static.
func TestDepsCheck(t *testing.T) {
	root := t.TempDir()
	run := func() (string, int, time.Duration) {
		t.Helper()
		cmd := exec.Command("bash", "deps.sh", "--check")
		cmd.Env = append(os.Environ(), "DEPS_ROOT="+root)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		start := time.Now()
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return stderr.String(), code, time.Since(start)
	}
	all := []string{"gcc", "libc6-dev", "postgresql", "docker.io", "busybox-static", "chromium",
		"iproute2", "runc", "containernetworking-plugins", "iptables", "conntrack", "nftables", "docker-registry"}
	out, code, took := run()
	if code != 1 || took > 5*time.Second {
		t.Fatalf("on an empty root: exit %d after %s, want 1 within 5s\n%s", code, took, out)
	}
	if !strings.Contains(out, "sudo apt-get install -y --no-install-recommends "+strings.Join(all, " ")) {
		t.Errorf("on an empty root, the install command does not name every package:\n%s", out)
	}

	// Some are there: chromium, the CNI plugins, runc in /usr/sbin,
	// PostgreSQL 15, and a busybox that is not static.
	exe := func(path string, content []byte) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, content, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"usr/bin/chromium", "usr/lib/cni/bridge", "usr/lib/cni/host-local", "usr/lib/cni/loopback",
		"usr/sbin/runc", "usr/lib/postgresql/15/bin/postgres", "usr/bin/docker-registry"} {
		exe(p, []byte("#!/bin/sh\n"))
	}
	exe("usr/bin/busybox", []byte("\x7fELF\x02\x01\x01\x00/lib64/ld-linux-x86-64.so.2\x00"))
	out, code, _ = run()
	want := []string{"gcc", "libc6-dev", "docker.io", "busybox-static", "iproute2", "iptables", "conntrack", "nftables"}
	if code != 1 || !strings.Contains(out, "--no-install-recommends "+strings.Join(want, " ")+"\n") {
		t.Errorf("with some installed: exit %d, want 1 and the command for %v only\n%s", code, want, out)
	}

	// All there: exit 0, nothing said.
	for _, p := range []string{"usr/sbin/gcc", "usr/sbin/dockerd", "usr/bin/docker", "usr/sbin/ip", "usr/sbin/iptables",
		"usr/sbin/conntrack", "usr/sbin/nft", "usr/include/stdio.h"} {
		exe(p, []byte("#!/bin/sh\n"))
	}
	exe("usr/bin/busybox", []byte("\x7fELF\x02\x01\x01\x00 statically built, no interpreter\x00"))
	if out, code, _ := run(); code != 0 || out != "" {
		t.Errorf("with everything installed: exit %d, output %q; want 0 and nothing", code, out)
	}
}
