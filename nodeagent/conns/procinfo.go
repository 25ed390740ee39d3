package conns

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Bounds on what is read from /proc/PID files.
const (
	maxCmdline   = 4096
	maxStatBytes = 4096
	maxCgroupLen = 16 << 10
)

// procInfo is what /proc/PID says about a process.
type procInfo struct {
	Comm        string
	PPID        int
	Cmdline     string
	Cgroup      string
	ContainerID string
}

// readProcInfo reads /proc/PID/stat, cmdline and cgroup under procRoot. It
// fails only when stat cannot be read (the process is gone); cmdline and
// cgroup are best effort because a process may exit between the reads.
func readProcInfo(procRoot string, pid int) (procInfo, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	stat, err := readBounded(filepath.Join(dir, "stat"), maxStatBytes)
	if err != nil {
		return procInfo{}, err
	}
	var pi procInfo
	if pi.Comm, pi.PPID, err = parseStat(stat); err != nil {
		return procInfo{}, fmt.Errorf("%s: %w", filepath.Join(dir, "stat"), err)
	}
	if cmd, err := readBounded(filepath.Join(dir, "cmdline"), maxCmdline); err == nil {
		pi.Cmdline = formatCmdline(cmd)
	}
	if cg, err := readBounded(filepath.Join(dir, "cgroup"), maxCgroupLen); err == nil {
		pi.Cgroup, pi.ContainerID = parseProcCgroup(string(cg))
	}
	return pi, nil
}

// readCgroup reads only /proc/PID/cgroup: for a parent whose child has
// already exited.
func readCgroup(procRoot string, pid int) (path, containerID string, err error) {
	cg, err := readBounded(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"), maxCgroupLen)
	if err != nil {
		return "", "", err
	}
	path, containerID = parseProcCgroup(string(cg))
	return path, containerID, nil
}

func readBounded(name string, max int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, max))
}

// parseStat returns the comm and parent PID from /proc/PID/stat:
// "PID (comm) S PPID ...". comm may hold spaces and parentheses, so it ends
// at the last ')'.
func parseStat(data []byte) (comm string, ppid int, err error) {
	open := bytes.IndexByte(data, '(')
	end := bytes.LastIndexByte(data, ')')
	if open < 0 || end < open {
		return "", 0, errors.New("stat: no (comm)")
	}
	fields := strings.Fields(string(data[end+1:]))
	if len(fields) < 2 {
		return "", 0, errors.New("stat: no parent pid after comm")
	}
	ppid, err = strconv.Atoi(fields[1])
	if err != nil || ppid < 0 {
		return "", 0, fmt.Errorf("stat: parent pid %q", fields[1])
	}
	return string(data[open+1 : end]), ppid, nil
}

// formatCmdline turns NUL-separated arguments into one space-separated line.
func formatCmdline(b []byte) string {
	b = bytes.TrimRight(b, "\x00")
	return strings.ReplaceAll(string(b), "\x00", " ")
}
