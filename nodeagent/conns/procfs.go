package conns

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// procfsWatcher samples the TCP tables of every network namespace it can see
// under ProcRoot.
type procfsWatcher struct {
	procRoot string
	interval time.Duration
	log      *slog.Logger
	now      func() time.Time

	reported, unenriched atomic.Uint64
	samples              atomic.Uint64 // completed samples, for tests
}

func newProcfsWatcher(opts Options) *procfsWatcher {
	return &procfsWatcher{procRoot: opts.ProcRoot, interval: opts.Interval, log: opts.Log, now: time.Now}
}

// Sensor returns "procfs".
func (w *procfsWatcher) Sensor() string { return SensorProcfs }

// Stats returns the watcher's counters.
func (w *procfsWatcher) Stats() Stats {
	return Stats{Reported: w.reported.Load(), Unenriched: w.unenriched.Load()}
}

// connKey identifies one socket across samples.
type connKey struct {
	netns  uint64
	inode  uint64
	remote netip.AddrPort
}

// Run samples immediately and then every Interval until ctx ends, reporting
// each outbound connection once (at the first sample that shows it). It
// returns nil when ctx ends, or an error when not even the reader's own TCP
// table can be read.
func (w *procfsWatcher) Run(ctx context.Context, emit func(Conn)) error {
	seen := make(map[connKey]bool)
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		if err := w.sample(ctx, seen, emit); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// candidate is an outbound socket found in a table.
type candidate struct {
	key    connKey
	remote netip.AddrPort
}

// sample reads every namespace's tables once, reports the connections not in
// seen and replaces seen by the connections present now.
func (w *procfsWatcher) sample(ctx context.Context, seen map[connKey]bool, emit func(Conn)) error {
	at := w.now()
	pids := w.pids()
	byNS, order := w.netnsOf(pids)
	low, high, rangeOK := w.ephemeralRange()

	var fresh []candidate
	present := make(map[connKey]bool, len(seen))
	tablesRead := 0
	for _, ns := range order {
		if ctx.Err() != nil {
			return nil
		}
		cands, err := w.readNetns(ns, byNS[ns], low, high, rangeOK)
		if err != nil {
			w.log.Debug("tcp tables unreadable", "netns", ns, "error", err)
			continue
		}
		tablesRead++
		for _, c := range cands {
			present[c.key] = true
			if !seen[c.key] {
				fresh = append(fresh, c)
			}
		}
	}
	if tablesRead == 0 {
		return fmt.Errorf("procfs connection sensor: no TCP table readable under %s", w.procRoot)
	}
	defer w.samples.Add(1)
	clear(seen)
	for k := range present {
		seen[k] = true
	}
	if len(fresh) == 0 {
		return nil
	}

	owners := w.socketOwners(fresh, byNS, pids)
	for _, c := range fresh {
		conn := Conn{Time: at, Dst: c.remote, PID: owners[c.key.inode]}
		if conn.PID == 0 {
			w.unenriched.Add(1)
		} else if pi, err := readProcInfo(w.procRoot, conn.PID); err == nil {
			conn.Comm, conn.PPID, conn.Cmdline = pi.Comm, pi.PPID, pi.Cmdline
			conn.Cgroup, conn.ContainerID = pi.Cgroup, pi.ContainerID
		} else {
			w.unenriched.Add(1)
		}
		w.reported.Add(1)
		emit(conn)
	}
	return nil
}

// pids lists the numeric entries of procRoot.
func (w *procfsWatcher) pids() []int {
	ents, err := os.ReadDir(w.procRoot)
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// netnsOf groups pids by network namespace inode, in order of first
// appearance. When no pid's namespace is readable (not root), it falls back
// to the reader's own namespace through procRoot/self.
func (w *procfsWatcher) netnsOf(pids []int) (map[uint64][]string, []uint64) {
	byNS := make(map[uint64][]string)
	var order []uint64
	add := func(ns uint64, dir string) {
		if _, ok := byNS[ns]; !ok {
			order = append(order, ns)
		}
		byNS[ns] = append(byNS[ns], dir)
	}
	for _, pid := range pids {
		dir := strconv.Itoa(pid)
		if ns, err := nsInode(filepath.Join(w.procRoot, dir, "ns", "net")); err == nil {
			add(ns, dir)
		}
	}
	if len(order) == 0 {
		ns, _ := nsInode(filepath.Join(w.procRoot, "self", "ns", "net"))
		add(ns, "self")
	}
	return byNS, order
}

// nsInode reads a namespace link such as "net:[4026531840]".
func nsInode(link string) (uint64, error) {
	target, err := os.Readlink(link)
	if err != nil {
		return 0, err
	}
	_, rest, ok := strings.Cut(target, ":[")
	num, ok2 := strings.CutSuffix(rest, "]")
	if !ok || !ok2 {
		return 0, fmt.Errorf("%s: unexpected target %q", link, target)
	}
	return strconv.ParseUint(num, 10, 64)
}

// ephemeralRange reads ip_local_port_range. The kernel keeps it per network
// namespace but only the reader's is visible; other namespaces are assumed to
// use the same range.
func (w *procfsWatcher) ephemeralRange() (low, high uint16, ok bool) {
	b, err := readBounded(filepath.Join(w.procRoot, "sys", "net", "ipv4", "ip_local_port_range"), 64)
	if err != nil {
		return 0, 0, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, false
	}
	l, err1 := strconv.ParseUint(f[0], 10, 16)
	h, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || l > h {
		return 0, 0, false
	}
	return uint16(l), uint16(h), true
}

// readNetns reads tcp and tcp6 of one namespace through the first of its
// processes whose tables are readable, and returns its outbound sockets:
// SYN_SENT ones, and ESTABLISHED ones whose local address and port are not
// those of a listener of the namespace (on that address or a wildcard) and
// whose local port lies in the ephemeral range (when known).
// Sockets without an inode (orphaned, not yet accepted) have no process to
// report and are skipped.
func (w *procfsWatcher) readNetns(ns uint64, dirs []string, low, high uint16, rangeOK bool) ([]candidate, error) {
	var lastErr error
	for _, dir := range dirs {
		var entries []tcpEntry
		listening := make(map[netip.AddrPort]bool)
		collect := func(e tcpEntry) {
			switch e.State {
			case tcpListen:
				listening[unmap(e.Local)] = true
			case tcpSynSent, tcpEstablished:
				if e.Inode != 0 && e.Remote.Port() != 0 {
					entries = append(entries, e)
				}
			}
		}
		err := w.readTable(filepath.Join(w.procRoot, dir, "net", "tcp"), collect)
		if err == nil {
			err = w.readTable(filepath.Join(w.procRoot, dir, "net", "tcp6"), collect)
			if errors.Is(err, fs.ErrNotExist) {
				err = nil // IPv6 disabled
			}
		}
		if err != nil {
			lastErr = err
			continue
		}
		var out []candidate
		for _, e := range entries {
			if e.State == tcpEstablished {
				local := unmap(e.Local)
				lp := local.Port()
				if accepted(listening, local) || rangeOK && (lp < low || lp > high) {
					continue
				}
			}
			remote := unmap(e.Remote)
			out = append(out, candidate{key: connKey{netns: ns, inode: e.Inode, remote: remote}, remote: remote})
		}
		return out, nil
	}
	return nil, lastErr
}

// accepted reports whether a local address belongs to a listener: one bound
// to that address and port, or to the port on a wildcard address.
func accepted(listening map[netip.AddrPort]bool, local netip.AddrPort) bool {
	p := local.Port()
	return listening[local] ||
		listening[netip.AddrPortFrom(netip.IPv4Unspecified(), p)] ||
		listening[netip.AddrPortFrom(netip.IPv6Unspecified(), p)]
}

// unmap turns a v4-mapped IPv6 address (a dual-stack socket's IPv4 peer)
// into IPv4.
func unmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func (w *procfsWatcher) readTable(name string, fn func(tcpEntry)) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := parseProcNetTCP(f, fn); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// socketOwners maps the inodes of fresh sockets to the PIDs holding them by
// reading "socket:[inode]" fd links: first the processes of each socket's
// namespace, then, for what is left (a socket passed to or created before
// entering another namespace), every other process. It stops as soon as
// every inode has an owner.
func (w *procfsWatcher) socketOwners(fresh []candidate, byNS map[uint64][]string, pids []int) map[uint64]int {
	want := make(map[uint64]bool, len(fresh))
	var nsOrder []uint64
	for _, c := range fresh {
		want[c.key.inode] = true
		if !slices.Contains(nsOrder, c.key.netns) {
			nsOrder = append(nsOrder, c.key.netns)
		}
	}
	owners := make(map[uint64]int, len(want))
	scanned := make(map[string]bool)
	scan := func(dir string) {
		if scanned[dir] || len(owners) == len(want) {
			return
		}
		scanned[dir] = true
		pid, err := strconv.Atoi(dir)
		if err != nil {
			return
		}
		fdDir := filepath.Join(w.procRoot, dir, "fd")
		ents, err := os.ReadDir(fdDir)
		if err != nil {
			return
		}
		for _, e := range ents {
			target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
			if err != nil {
				continue
			}
			num, ok := strings.CutPrefix(target, "socket:[")
			if !ok {
				continue
			}
			inode, err := strconv.ParseUint(strings.TrimSuffix(num, "]"), 10, 64)
			if err != nil || !want[inode] {
				continue
			}
			if _, dup := owners[inode]; !dup {
				owners[inode] = pid
			}
		}
	}
	for _, ns := range nsOrder {
		for _, dir := range byNS[ns] {
			scan(dir)
		}
	}
	for _, pid := range pids {
		scan(strconv.Itoa(pid))
	}
	return owners
}
