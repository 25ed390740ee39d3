package memlimit

import (
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
)

func TestCgroupLimit(t *testing.T) {
	for _, tc := range []struct {
		name      string
		files     map[string]string
		want      int64
		wantFile  string
		wantError bool
	}{
		{"v2 in a cgroup namespace", map[string]string{
			"proc/self/cgroup":         "0::/\n",
			"sys/fs/cgroup/memory.max": "536870912\n",
		}, 512 << 20, "cgroup v2 /sys/fs/cgroup/memory.max", false},
		{"v2 at its path from the host", map[string]string{
			"proc/self/cgroup":                          "0::/kubepods/pod1/c1\n",
			"sys/fs/cgroup/kubepods/pod1/c1/memory.max": "268435456\n",
			"sys/fs/cgroup/memory.max":                  "max\n",
		}, 256 << 20, "cgroup v2 /sys/fs/cgroup/kubepods/pod1/c1/memory.max", false},
		{"v2 without a limit", map[string]string{
			"proc/self/cgroup":         "0::/\n",
			"sys/fs/cgroup/memory.max": "max\n",
		}, 0, "cgroup v2 /sys/fs/cgroup/memory.max", false},
		{"v1, as on this project's machines", map[string]string{
			"proc/self/cgroup": "9:name=systemd:/\n4:memory:/process_api/2b72\n1:cpu:/\n0::/\n",
			"sys/fs/cgroup/memory/process_api/2b72/memory.limit_in_bytes": "1073741824",
		}, 1 << 30, "cgroup v1 /sys/fs/cgroup/memory/process_api/2b72/memory.limit_in_bytes", false},
		{"v1 without a limit", map[string]string{
			"proc/self/cgroup":                           "4:cpu,memory:/\n",
			"sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",
		}, 0, "cgroup v1 /sys/fs/cgroup/memory/memory.limit_in_bytes", false},
		{"no cgroup file", map[string]string{}, 0, "", false},
		{"no memory controller mounted", map[string]string{"proc/self/cgroup": "0::/\n"}, 0, "", false},
		{"garbage", map[string]string{
			"proc/self/cgroup":         "0::/\n",
			"sys/fs/cgroup/memory.max": "lots\n",
		}, 0, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for p, content := range tc.files {
				p = filepath.Join(root, p)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, file, err := CgroupLimit(root)
			if (err != nil) != tc.wantError {
				t.Fatalf("CgroupLimit() error = %v, want error %v", err, tc.wantError)
			}
			if tc.wantError {
				return
			}
			if got != tc.want || file != tc.wantFile {
				t.Errorf("CgroupLimit() = %d, %q; want %d, %q", got, file, tc.want, tc.wantFile)
			}
		})
	}
}

func TestApply(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	root := t.TempDir()
	for p, content := range map[string]string{"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": "1000000000\n"} {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		if err := os.WriteFile(filepath.Join(root, p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("GOMEMLIMIT", "")
	s, err := Apply(root, 0.9)
	if err != nil || s.Limit != 900_000_000 || s.Container != 1_000_000_000 || debug.SetMemoryLimit(-1) != 900_000_000 {
		t.Errorf("Apply() = %+v, %v, runtime limit %d; want 900000000 of a 1000000000 container", s, err, debug.SetMemoryLimit(-1))
	}
	debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("GOMEMLIMIT", "64MiB") // the runtime read it at start; Apply leaves the limit as it is
	if s, err := Apply(root, 0.9); err != nil || s.Source != "GOMEMLIMIT" || debug.SetMemoryLimit(-1) != math.MaxInt64 {
		t.Errorf("Apply() with GOMEMLIMIT = %+v, %v; want the limit left alone", s, err)
	}
}
