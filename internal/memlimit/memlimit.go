// Package memlimit gives the Go runtime a soft memory limit below the
// container's: without one the collector lets the heap grow to twice
// what is live (GOGC=100) and a container near its limit is OOM-killed
// before the collector hurries.
package memlimit

import (
	"bufio"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
)

// DefaultFraction of the container's limit is given to the runtime; the
// rest is for what the runtime does not count (the binary's text, the
// kernel's page cache of the SQLite file charged to the cgroup) and for
// the collector to catch up.
const DefaultFraction = 0.9

// Setting is what Apply did.
type Setting struct {
	// Limit is the soft limit in force, in bytes; math.MaxInt64 is none.
	Limit int64
	// Source says where it came from: "GOMEMLIMIT", "cgroup v2 FILE",
	// "cgroup v1 FILE" or "none".
	Source string
	// Container is the cgroup's limit in bytes, or 0 when there is none
	// (or GOMEMLIMIT was set).
	Container int64
}

// Apply sets the runtime's soft memory limit to fraction of the memory
// limit of the cgroup this process runs in, found under root ("/" on a
// real system). A GOMEMLIMIT in the environment wins: the runtime has
// applied it already, and Apply leaves it. Without a cgroup limit nothing
// changes.
func Apply(root string, fraction float64) (Setting, error) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return Setting{Limit: debug.SetMemoryLimit(-1), Source: "GOMEMLIMIT"}, nil
	}
	limit, file, err := CgroupLimit(root)
	if err != nil || limit <= 0 {
		return Setting{Limit: debug.SetMemoryLimit(-1), Source: "none"}, err
	}
	if fraction <= 0 || fraction > 1 {
		fraction = DefaultFraction
	}
	soft := int64(float64(limit) * fraction)
	debug.SetMemoryLimit(soft)
	return Setting{Limit: soft, Source: file, Container: limit}, nil
}

// noLimit is above any real machine's memory: cgroup v1 writes a page
// rounded math.MaxInt64 for "no limit".
const noLimit = 1 << 62

// CgroupLimit returns the memory limit of the cgroup this process runs in
// and the file that says so: cgroup v2's memory.max, or cgroup v1's
// memory.limit_in_bytes, under root. 0 means no limit, or no cgroup
// memory controller to ask.
func CgroupLimit(root string) (int64, string, error) {
	b, err := os.ReadFile(filepath.Join(root, "proc/self/cgroup"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", err
	}
	var v2, v1 string
	found2, found1 := false, false
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	for sc.Scan() {
		// hierarchy-ID:controller-list:cgroup-path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			v2, found2 = parts[2], true
		case hasController(parts[1], "memory"):
			v1, found1 = parts[2], true
		}
	}
	// A container sees its own cgroup at the mount's root when it has a
	// cgroup namespace, and at its path from the host's root otherwise.
	try := func(dir, path, file string) (int64, string, bool, error) {
		for _, p := range []string{filepath.Join(dir, path, file), filepath.Join(dir, file)} {
			raw, err := os.ReadFile(filepath.Join(root, p))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return 0, "", false, err
			}
			n, err := parseLimit(string(raw))
			if err != nil {
				return 0, "", false, fmt.Errorf("%s: %w", p, err)
			}
			return n, p, true, nil
		}
		return 0, "", false, nil
	}
	if found1 {
		if n, p, ok, err := try("sys/fs/cgroup/memory", v1, "memory.limit_in_bytes"); ok || err != nil {
			return n, "cgroup v1 /" + p, err
		}
	}
	if found2 {
		if n, p, ok, err := try("sys/fs/cgroup", v2, "memory.max"); ok || err != nil {
			return n, "cgroup v2 /" + p, err
		}
	}
	return 0, "", nil
}

func hasController(list, c string) bool {
	for _, x := range strings.Split(list, ",") {
		if x == c {
			return true
		}
	}
	return false
}

// parseLimit reads "max" or a number of bytes; "max" and v1's page
// rounded maximum are no limit (0).
func parseLimit(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "max" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory limit %q: %w", s, err)
	}
	if n >= noLimit || n > math.MaxInt64 {
		return 0, nil
	}
	return int64(n), nil
}
