package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// What the real node changes on the host is global: the bridge, iptables,
// sysctls, cgroups, a few well-known paths. hostState records how the host
// was before the node started, in a file under NodeDir written before
// anything changes, so that the tear-down can put it back, also the next
// run's after this one crashed.

// hostState is the host as it was before a node started, and the
// processes the node started.
type hostState struct {
	// Sysctls are the values of every writable sysctl, by path under
	// /proc/sys.
	Sysctls map[string]string `json:"sysctls"`
	// Rules are iptables-save's and ip6tables-save's output, by command.
	Rules map[string]string `json:"rules"`
	// Tables are the nftables tables ("ip filter"), when nft is
	// installed: iptables-nft creates the tables it is first asked for.
	Tables []string `json:"tables"`
	// Existed says which of hostPaths existed.
	Existed map[string]bool `json:"existed"`
	// Procs are the processes started, in order.
	Procs []stateProc `json:"procs"`
}

// stateProc identifies a process across a crash of the process that
// started it: a PID alone may be reused.
type stateProc struct {
	Name  string `json:"name"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // /proc/PID/stat's starttime
}

// hostPaths are the places outside NodeDir that the node's programs use
// or create by default: what did not exist before is removed by the
// tear-down.
func hostPaths() []string {
	return []string{
		"/run/containerd", "/run/containerd/s", "/run/netns", "/var/run/nri", "/run/nri",
		"/var/log/containers", "/var/log/pods", "/var/lib/cni", "/var/lib/kubelet", "/etc/cni",
		"/opt/cni", "/opt/containerd", "/etc/kubernetes",
		"/var/lib/containerd", "/var/lib/buildguard-node-agent",
	}
}

// volatileSysctls change by themselves; the tear-down leaves them alone.
func volatileSysctls() []string {
	return []string{"kernel/random/", "kernel/ns_last_pid", "kernel/tainted", "fs/", "vm/stat_refresh"}
}

func statePath() string { return filepath.Join(NodeDir, "host-state.json") }

// recordHost records the host's state before a node starts.
func recordHost() (*hostState, error) {
	st := &hostState{Sysctls: map[string]string{}, Rules: map[string]string{}, Existed: map[string]bool{}}
	var err error
	if st.Sysctls, err = readSysctls(); err != nil {
		return nil, err
	}
	for _, cmd := range []string{"iptables-save", "ip6tables-save"} {
		out, err := exec.Command(cmd).Output()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmd, err)
		}
		st.Rules[cmd] = string(out)
	}
	if st.Tables, err = nftTables(); err != nil {
		return nil, err
	}
	for _, p := range hostPaths() {
		_, err := os.Lstat(p)
		st.Existed[p] = err == nil
	}
	return st, nil
}

// nftTables lists the nftables tables as "family name"; none without nft.
func nftTables() ([]string, error) {
	if _, err := exec.LookPath("nft"); err != nil {
		return nil, nil
	}
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return nil, fmt.Errorf("nft list tables: %w", err)
	}
	var tables []string
	for _, line := range strings.Split(string(out), "\n") {
		if t, ok := strings.CutPrefix(strings.TrimSpace(line), "table "); ok {
			tables = append(tables, t)
		}
	}
	return tables, nil
}

// newTables returns the nftables tables that the node made and left: the
// ones iptables-nft made for it, now without rules, and kube-proxy's.
func newTables(before []string) []string {
	now, _ := nftTables()
	had := map[string]bool{}
	for _, t := range before {
		had[t] = true
	}
	var out []string
	for _, t := range now {
		if had[t] {
			continue
		}
		family, name, _ := strings.Cut(t, " ")
		switch {
		case strings.HasPrefix(name, "kube"):
			out = append(out, t)
		case family == "ip" || family == "ip6":
			save := map[string]string{"ip": "iptables-save", "ip6": "ip6tables-save"}[family]
			rules, err := exec.Command(save, "-t", name).Output()
			if err == nil && !strings.Contains(string(rules), "\n-A ") {
				out = append(out, t)
			}
		}
	}
	return out
}

// removeTables deletes the tables of newTables.
func removeTables(before []string) []string {
	var left []string
	for _, t := range newTables(before) {
		args := append([]string{"delete", "table"}, strings.Fields(t)...)
		if out, err := exec.Command("nft", args...).CombinedOutput(); err != nil {
			left = append(left, fmt.Sprintf("nft %s: %v: %s", strings.Join(args, " "), err, out))
		}
	}
	return left
}

func (st *hostState) save() error {
	b, err := json.MarshalIndent(st, "", " ")
	if err != nil {
		return err
	}
	tmp := statePath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, statePath())
}

func loadHostState() (*hostState, error) {
	b, err := os.ReadFile(statePath())
	if err != nil {
		return nil, err
	}
	var st hostState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", statePath(), err)
	}
	return &st, nil
}

// addProc records p in the state file.
func (st *hostState) addProc(p *Process) error {
	pid := p.cmd.Process.Pid
	start, err := procStart(pid)
	if err != nil {
		return err
	}
	st.Procs = append(st.Procs, stateProc{Name: p.Name, PID: pid, Start: start})
	return st.save()
}

// procStart returns the start time of pid, in clock ticks since boot.
func procStart(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	return strconv.ParseUint(f[19], 10, 64)
}

func readSysctls() (map[string]string, error) {
	out := map[string]string{}
	err := filepath.WalkDir("/proc/sys", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // unreadable directories are skipped
		}
		if d.IsDir() {
			return nil
		}
		key := strings.TrimPrefix(path, "/proc/sys/")
		for _, v := range volatileSysctls() {
			if strings.HasPrefix(key, v) {
				return nil
			}
		}
		info, err := d.Info()
		if err != nil || info.Mode().Perm()&0o600 != 0o600 {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		out[key] = strings.Join(strings.Fields(string(b)), " ")
		return nil
	})
	return out, err
}

// restoreSysctls writes back every sysctl whose value differs from
// before and returns those it could not restore, with their values.
func restoreSysctls(before map[string]string) []string {
	now, _ := readSysctls()
	var left []string
	for key, was := range before {
		is, ok := now[key]
		if !ok || is == was {
			continue // gone with an interface, or unchanged
		}
		// Writing a multi-value sysctl takes tabs or spaces alike.
		if err := os.WriteFile("/proc/sys/"+key, []byte(was), 0o644); err != nil {
			left = append(left, fmt.Sprintf("sysctl %s = %q, was %q: %v", strings.ReplaceAll(key, "/", "."), is, was, err))
		}
	}
	sort.Strings(left)
	return left
}

// changedSysctls lists the sysctls that differ from before.
func changedSysctls(before map[string]string) []string {
	now, _ := readSysctls()
	var out []string
	for key, was := range before {
		if is, ok := now[key]; ok && is != was {
			out = append(out, fmt.Sprintf("%s = %q (was %q)", strings.ReplaceAll(key, "/", "."), is, was))
		}
	}
	sort.Strings(out)
	return out
}

// iptablesRules is one iptables-save output, by table: its chains and its
// rules as "-A CHAIN ..." lines.
type iptablesRules map[string]*iptablesTable

type iptablesTable struct {
	chains []string
	rules  []string
}

func parseIptablesSave(s string) iptablesRules {
	out := iptablesRules{}
	var t *iptablesTable
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			t = &iptablesTable{}
			out[line[1:]] = t
		case t == nil:
		case strings.HasPrefix(line, ":"):
			t.chains = append(t.chains, strings.Fields(line[1:])[0])
		case strings.HasPrefix(line, "-A "):
			t.rules = append(t.rules, line)
		}
	}
	return out
}

// nodeRuleMarks are what every rule the node's programs add names: their
// chains (kube-proxy's and the kubelet's KUBE-, the CNI plugins' CNI-,
// the harness's BGNODE-), the bridge, the pod and Service ranges.
func nodeRuleMarks() []string {
	return []string{"KUBE-", "CNI-", "BGNODE-", NodeBridge, PodCIDR, ServiceCIDR}
}

func isNodeChain(c string) bool {
	return strings.HasPrefix(c, "KUBE-") || strings.HasPrefix(c, "CNI-") || strings.HasPrefix(c, "BGNODE-")
}

// ruleCleanup returns the iptables-restore --noflush input that removes
// from now what the node added since before: the chains named like the
// node's that were not there, and the rules in other chains that mention
// the node's chains, bridge or ranges. Other rules, also new ones, stay.
func ruleCleanup(before, now string) string {
	b, n := parseIptablesSave(before), parseIptablesSave(now)
	var out strings.Builder
	tables := make([]string, 0, len(n))
	for t := range n {
		tables = append(tables, t)
	}
	sort.Strings(tables)
	for _, name := range tables {
		t := n[name]
		old := b[name]
		if old == nil {
			old = &iptablesTable{}
		}
		had := map[string]int{}
		for _, r := range old.rules {
			had[r]++
		}
		oldChains := map[string]bool{}
		for _, c := range old.chains {
			oldChains[c] = true
		}
		ours := map[string]bool{}
		for _, c := range t.chains {
			if isNodeChain(c) && !oldChains[c] {
				ours[c] = true
			}
		}
		var lines []string
		for _, r := range t.rules {
			if had[r] > 0 {
				had[r]--
				continue
			}
			chain := strings.Fields(r)[1]
			if ours[chain] {
				continue // flushed with its chain
			}
			for _, m := range nodeRuleMarks() {
				if strings.Contains(r, m) {
					lines = append(lines, "-D"+strings.TrimPrefix(r, "-A"))
					break
				}
			}
		}
		var chains []string
		for c := range ours {
			chains = append(chains, c)
		}
		sort.Strings(chains)
		for _, c := range chains {
			lines = append(lines, "-F "+c)
		}
		for _, c := range chains {
			lines = append(lines, "-X "+c)
		}
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(&out, "*%s\n%s\nCOMMIT\n", name, strings.Join(lines, "\n"))
	}
	return out.String()
}

// restoreRules removes the rules the node added, for IPv4 and IPv6, and
// returns what is left of them.
func restoreRules(before map[string]string) []string {
	var left []string
	for _, fam := range []struct{ save, restore string }{{"iptables-save", "iptables-restore"}, {"ip6tables-save", "ip6tables-restore"}} {
		now, err := exec.Command(fam.save).Output()
		if err != nil {
			left = append(left, fmt.Sprintf("%s: %v", fam.save, err))
			continue
		}
		script := ruleCleanup(before[fam.save], string(now))
		if script == "" {
			continue
		}
		cmd := exec.Command(fam.restore, "--noflush")
		cmd.Stdin = strings.NewReader(script)
		if out, err := cmd.CombinedOutput(); err != nil {
			left = append(left, fmt.Sprintf("%s --noflush: %v: %s\n%s", fam.restore, err, out, script))
		}
		now, _ = exec.Command(fam.save).Output()
		if rest := ruleCleanup(before[fam.save], string(now)); rest != "" {
			left = append(left, fam.save+" still has:\n"+rest)
		}
	}
	return left
}

// processesOfNode returns the PIDs of processes the node left: those
// recorded in st that are still the same processes, those whose command
// line names NodeDir or the node's containerd socket (the shims of its
// containers), and those in its cgroups.
func processesOfNode(st *hostState) []int {
	seen := map[int]bool{os.Getpid(): true}
	var out []int
	add := func(pid int) {
		if !seen[pid] {
			seen[pid] = true
			out = append(out, pid)
		}
	}
	for _, p := range st.Procs {
		if s, err := procStart(p.PID); err == nil && s == p.Start {
			add(p.PID)
		}
	}
	for _, pid := range processesMentioning(NodeDir) {
		add(pid)
	}
	for _, pid := range processesMentioning("-address\x00" + containerdSocket + "\x00") {
		add(pid)
	}
	for _, pid := range cgroupProcs() {
		add(pid)
	}
	return out
}

// cgroupMounts returns the mount points of the host's cgroup hierarchies
// (v1 controllers, or the v2 unified one).
func cgroupMounts() []string {
	var out []string
	for _, fields := range mountinfo() {
		// ... mountpoint ... - fstype source options
		for i, fld := range fields {
			if fld == "-" && i+1 < len(fields) && (fields[i+1] == "cgroup" || fields[i+1] == "cgroup2") {
				out = append(out, fields[4])
			}
		}
	}
	return out
}

// nodeCgroupDirs returns the node's cgroup directories in every
// hierarchy, deepest first.
func nodeCgroupDirs() []string {
	var out []string
	for _, m := range cgroupMounts() {
		root := filepath.Join(m, nodeCgroup)
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				out = append(out, path)
			}
			return nil
		})
	}
	sort.Slice(out, func(i, j int) bool { return strings.Count(out[i], "/") > strings.Count(out[j], "/") })
	return out
}

// cgroupProcs returns the processes in the node's cgroups: the pods'
// containers and the builds of the node's Docker.
func cgroupProcs() []int {
	seen := map[int]bool{}
	var out []int
	for _, d := range nodeCgroupDirs() {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
				seen[pid] = true
				out = append(out, pid)
			}
		}
	}
	return out
}

// killAll sends SIGKILL to pids until none is left, for up to 10s.
func killAll(st *hostState) []string {
	deadline := time.Now().Add(10 * time.Second)
	for {
		pids := processesOfNode(st)
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			var left []string
			for _, pid := range pids {
				cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				left = append(left, fmt.Sprintf("process %d: %s", pid, bytes.ReplaceAll(cmd, []byte{0}, []byte{' '})))
			}
			return left
		}
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// unmountAll unmounts everything under the given directories, deepest
// first; a mount still busy is detached.
func unmountAll(dirs ...string) []string {
	for range 3 {
		var ms []string
		for _, d := range dirs {
			ms = append(ms, mountsUnder(d)...)
		}
		if len(ms) == 0 {
			return nil
		}
		sort.Slice(ms, func(i, j int) bool { return len(ms[i]) > len(ms[j]) })
		for _, m := range ms {
			if err := syscall.Unmount(m, 0); err != nil {
				syscall.Unmount(m, syscall.MNT_DETACH)
			}
		}
	}
	var left []string
	for _, d := range dirs {
		for _, m := range mountsUnder(d) {
			left = append(left, "mount "+m)
		}
	}
	return left
}

// removeCgroups removes the node's cgroups, deepest first.
func removeCgroups() []string {
	var left []string
	for _, d := range nodeCgroupDirs() {
		var err error
		for range 20 {
			if err = syscall.Rmdir(d); err == nil || errors.Is(err, syscall.ENOENT) {
				break
			}
			time.Sleep(50 * time.Millisecond) // a process just killed is still leaving
		}
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			left = append(left, fmt.Sprintf("cgroup %s: %v", d, err))
		}
	}
	return left
}

// removeNetwork deletes the bridge and the pods' ends of their veths.
func removeNetwork() []string {
	out, _ := exec.Command("ip", "-o", "link", "show", "master", NodeBridge).Output()
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			exec.Command("ip", "link", "del", name).Run()
		}
	}
	if err := exec.Command("ip", "link", "show", NodeBridge).Run(); err == nil {
		if out, err := exec.Command("ip", "link", "del", NodeBridge).CombinedOutput(); err != nil {
			return []string{fmt.Sprintf("ip link del %s: %v: %s", NodeBridge, err, out)}
		}
	}
	return nil
}

// removeHostPaths removes what the node created outside NodeDir: the
// paths of hostPaths that did not exist before (in shared directories,
// only the node's own files), and the sockets of the node's daemons.
func removeHostPaths(st *hostState) []string {
	// The shims' sockets: each shim's bundle, under the node's containerd
	// state, names its socket in bootstrap.json.
	boots, _ := filepath.Glob(filepath.Join(NodeDir, "run", "containerd", "io.containerd.runtime.v2.task", "*", "*", "bootstrap.json"))
	for _, f := range boots {
		var b struct{ Address string }
		if data, err := os.ReadFile(f); err == nil && json.Unmarshal(data, &b) == nil {
			if s := strings.TrimPrefix(b.Address, "unix://"); strings.HasPrefix(s, "/run/containerd/s/") {
				os.Remove(s)
			}
		}
	}
	os.Remove(containerdSocket)
	os.Remove(containerdSocket + ".ttrpc")
	if isSocketOf(dockerSocket, NodeDir) {
		os.Remove(dockerSocket)
	}
	// Containers' log links point into the node's pod log directory.
	links, _ := filepath.Glob("/var/log/containers/*")
	for _, l := range links {
		if t, err := os.Readlink(l); err == nil && strings.HasPrefix(t, NodeDir+"/") {
			os.Remove(l)
		}
	}
	var left []string
	shared := map[string]bool{"/run/containerd": true, "/run/containerd/s": true}
	paths := hostPaths()
	for i := len(paths) - 1; i >= 0; i-- {
		p := paths[i]
		if st.Existed[p] {
			continue
		}
		if _, err := os.Lstat(p); err != nil {
			continue
		}
		var err error
		if shared[p] {
			err = os.Remove(p) // only when empty: others' shims put sockets there too
		} else {
			err = os.RemoveAll(p)
		}
		if err != nil {
			left = append(left, fmt.Sprintf("path %s: %v", p, err))
		}
	}
	return left
}

// isSocketOf reports whether the unix socket at path is a dockerd's whose
// pidfile lies under dir; no dockerd of another test is taken for ours.
func isSocketOf(path, dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "docker", "dockerd.pid"))
	if err != nil {
		return false
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid > 0 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if !bytes.Contains(cmd, []byte(dir)) {
				return false // the pid is another process's now
			}
		}
	}
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&fs.ModeSocket != 0
}

// TeardownNode removes what a node left on the host, whether it is
// running, stopped or crashed: processes, mounts, cgroups, the bridge and
// the rules, sysctls, paths. It returns an error naming what it could not
// remove; then it keeps its record of the host's state for the next try.
// With no record (no node ran, or its tear-down finished) it does nothing.
func TeardownNode() error {
	st, err := loadHostState()
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var left []string
	// The node's processes first: nothing may set up again what is
	// being removed.
	for i := len(st.Procs) - 1; i >= 0; i-- {
		p := st.Procs[i]
		if s, err := procStart(p.PID); err == nil && s == p.Start {
			syscall.Kill(p.PID, syscall.SIGTERM)
			waitGone(p.PID, p.Start, 10*time.Second)
		}
	}
	left = append(left, killAll(st)...)
	left = append(left, unmountAll(NodeDir, nodeCacheDockerRoot())...)
	left = append(left, removeCgroups()...)
	left = append(left, removeNetwork()...)
	left = append(left, restoreRules(st.Rules)...)
	left = append(left, removeTables(st.Tables)...)
	left = append(left, restoreSysctls(st.Sysctls)...)
	left = append(left, removeHostPaths(st)...)
	if len(left) > 0 {
		return fmt.Errorf("the node's tear-down left:\n  %s", strings.Join(left, "\n  "))
	}
	// Last the state, with the directory: from here on nothing is left.
	if err := os.RemoveAll(NodeDir); err != nil {
		return fmt.Errorf("remove %s: %w", NodeDir, err)
	}
	return nil
}

func waitGone(pid int, start uint64, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if s, err := procStart(pid); err != nil || s != start {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}
