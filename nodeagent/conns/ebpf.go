//go:build linux

package conns

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// The tracepoint the program attaches to. TCP sockets move to SYN_SENT inside
// connect(2) (tcp_v4_connect, tcp_v6_connect), so the current task is the
// connecting process.
const (
	tpGroup = "sock"
	tpName  = "inet_sock_set_state"

	ipprotoTCP = 6
	afInet     = 2
	afInet6    = 10
)

// ringBytes is the ring buffer's size: room for about 6000 events between
// two reads. A full ring drops events, counted in Stats.Dropped.
const ringBytes = 1 << 20

// event is the record the program writes to the ring buffer.
//
//	0  u64 pid_tgid     8 u64 cgroup id   16 u64 ktime (CLOCK_MONOTONIC ns)
//	24 [16]u8 comm     40 u16 family      42 u16 dport (host order)
//	44 [4]u8 daddr     48 [16]u8 daddr_v6 64 u32 parent tgid (0: unknown) 68 u32 zero
//	72 [96]u8 name of the task's memory cgroup (the leaf: "<id>",
//	   "docker-<id>.scope", ...; empty when unknown)
const (
	evPidTgid  = 0
	evCgroup   = 8
	evKtime    = 16
	evComm     = 24
	evFamily   = 40
	evDport    = 42
	evDaddr    = 44
	evDaddr6   = 48
	evPPID     = 64
	evCgName   = 72
	cgNameLen  = 96
	eventBytes = evCgName + cgNameLen
)

// taskOffsets locate, from the kernel's BTF, what the program reads of the
// current task while the connecting process still exists: the parent's tgid
// (task_struct->real_parent->tgid) and the name of its memory cgroup
// (task_struct->cgroups->subsys[memory_cgrp_id]->cgroup->kn->name), which
// for containers holds the container ID in cgroup v1 and v2. A zero offset
// leaves that part out.
type taskOffsets struct {
	RealParent, Tgid uint32
	// Cgroups is task_struct.cgroups; Subsys is css_set.subsys plus
	// memory_cgrp_id pointers; CssCgroup, CgroupKn and KnName follow the
	// chain to the name.
	Cgroups, Subsys, CssCgroup, CgroupKn, KnName uint32
}

func (t taskOffsets) hasParent() bool { return t.RealParent != 0 && t.Tgid != 0 }

func (t taskOffsets) hasCgroupName() bool {
	// Subsys and KnName may be 0 (the first member); Cgroups never is.
	return t.Cgroups != 0 && t.CgroupKn != 0
}

// ebpfWatcher reports connections from the sock:inet_sock_set_state
// tracepoint.
type ebpfWatcher struct {
	procRoot string
	log      *slog.Logger
	layout   sockStateLayout
	task     taskOffsets

	reported, dropped, unenriched atomic.Uint64
}

// newEBPFWatcher prepares the sensor and proves it loads and attaches.
func newEBPFWatcher(opts Options) (*ebpfWatcher, error) {
	w := &ebpfWatcher{procRoot: opts.ProcRoot, log: opts.Log}
	err := withTracefs(func() error {
		var err error
		if w.layout, err = readSockStateLayout(); err != nil {
			return &LoadError{Step: "format", Err: err}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if w.task, err = kernelTaskOffsets(); err != nil {
		// The parent and cgroup then come from /proc/PID only, which is
		// gone for processes that exit quickly; worth a warning, not a
		// fallback.
		opts.Log.Warn("eBPF connection sensor: kernel BTF lacks what the program reads; parent or cgroup of short-lived processes will be missing", "error", err)
	}
	if !hostPIDNamespace(opts.ProcRoot) {
		opts.Log.Warn("eBPF connection sensor: not in the host PID namespace; PIDs are the host's and their /proc details will be missing or wrong")
	}
	s, err := w.load()
	if err != nil {
		return nil, err
	}
	s.close()
	return w, nil
}

// Sensor returns "ebpf".
func (w *ebpfWatcher) Sensor() string { return SensorEBPF }

// Stats returns the watcher's counters.
func (w *ebpfWatcher) Stats() Stats {
	return Stats{Reported: w.reported.Load(), Dropped: w.dropped.Load(), Unenriched: w.unenriched.Load()}
}

// session is one loaded and attached program with its maps.
type session struct {
	events, drops *ebpf.Map
	prog          *ebpf.Program
	link          link.Link
	reader        *ringbuf.Reader
}

func (s *session) close() {
	if s.reader != nil {
		s.reader.Close()
	}
	if s.link != nil {
		s.link.Close()
	}
	if s.prog != nil {
		s.prog.Close()
	}
	if s.events != nil {
		s.events.Close()
	}
	if s.drops != nil {
		s.drops.Close()
	}
}

// load creates the maps, loads and attaches the program and opens the ring
// buffer reader.
func (w *ebpfWatcher) load() (*session, error) {
	var s *session
	err := withTracefs(func() error {
		var err error
		s, err = w.loadAttach()
		return err
	})
	return s, err
}

func (w *ebpfWatcher) loadAttach() (*session, error) {
	s := &session{}
	var err error
	s.events, err = ebpf.NewMap(&ebpf.MapSpec{Name: "bg_conn_events", Type: ebpf.RingBuf, MaxEntries: ringBytes})
	if err != nil {
		return nil, &LoadError{Step: "maps", Err: err}
	}
	s.drops, err = ebpf.NewMap(&ebpf.MapSpec{Name: "bg_conn_drops", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		s.close()
		return nil, &LoadError{Step: "maps", Err: err}
	}
	s.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "bg_conn",
		Type:         ebpf.TracePoint,
		Instructions: buildProgram(w.layout, w.task, s.events.FD(), s.drops.FD()),
		// bpf_probe_read_kernel and bpf_get_current_task are GPL-only
		// helpers; the program is generated here and is dual licensed.
		License: "Dual MIT/GPL",
	})
	if err != nil {
		s.close()
		return nil, &LoadError{Step: "program", Err: err}
	}
	s.link, err = link.Tracepoint(tpGroup, tpName, s.prog, nil)
	if err != nil {
		s.close()
		return nil, &LoadError{Step: "attach", Err: err}
	}
	s.reader, err = ringbuf.NewReader(s.events)
	if err != nil {
		s.close()
		return nil, &LoadError{Step: "ringbuf", Err: err}
	}
	return s, nil
}

// Run loads the program, reports connections until ctx ends and releases
// everything. When ctx ends it still reports what the ring buffer holds, then
// returns nil.
func (w *ebpfWatcher) Run(ctx context.Context, emit func(Conn)) error {
	s, err := w.load()
	if err != nil {
		return err
	}
	defer s.close()
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			// Drain: ReadInto returns what the ring holds now, then
			// ErrFlushed.
			if err := s.reader.Flush(); err != nil {
				s.reader.Close()
			}
		case <-done:
		}
	}()

	var rec ringbuf.Record
	var lastDrops uint64
	for {
		// The deadline wakes the loop to publish the drop counter.
		s.reader.SetDeadline(time.Now().Add(5 * time.Second))
		err := s.reader.ReadInto(&rec)
		switch {
		case err == nil:
			w.record(rec.RawSample, emit)
			continue
		case errors.Is(err, os.ErrDeadlineExceeded):
		case errors.Is(err, ringbuf.ErrFlushed), errors.Is(err, ringbuf.ErrClosed):
			w.publishDrops(s, &lastDrops)
			return nil
		default:
			return fmt.Errorf("ebpf connection sensor: read ring buffer: %w", err)
		}
		w.publishDrops(s, &lastDrops)
	}
}

// record reports the connection of one ring buffer record. A record it
// cannot decode is logged and skipped: ending Run on it would stop the
// sensor, and lose connections, until the agent restarts it.
func (w *ebpfWatcher) record(raw []byte, emit func(Conn)) {
	ev, err := decodeEvent(raw)
	if err != nil {
		w.log.Warn("eBPF connection sensor: skipping a record", "error", err)
		return
	}
	emit(w.enrich(ev, monotonicNow(), time.Now()))
	w.reported.Add(1)
}

// publishDrops adds the program's new drops to the watcher's counter.
func (w *ebpfWatcher) publishDrops(s *session, last *uint64) {
	var perCPU []uint64
	if err := s.drops.Lookup(uint32(0), &perCPU); err != nil {
		w.log.Warn("eBPF connection sensor: reading drop counter", "error", err)
		return
	}
	var total uint64
	for _, n := range perCPU {
		total += n
	}
	if total > *last {
		w.dropped.Add(total - *last)
		w.log.Warn("eBPF connection sensor: ring buffer full, connections lost", "dropped", total-*last)
		*last = total
	}
}

// rawEvent is a decoded ring buffer record.
type rawEvent struct {
	PID, TID uint32
	PPID     uint32
	CgroupID uint64
	Ktime    uint64
	Comm     string
	Dst      netip.AddrPort
	CgName   string // leaf name of the memory cgroup, "" when unknown
}

func decodeEvent(b []byte) (rawEvent, error) {
	if len(b) < eventBytes {
		return rawEvent{}, fmt.Errorf("ring buffer record of %d bytes, want %d", len(b), eventBytes)
	}
	ne := binary.NativeEndian
	pidTgid := ne.Uint64(b[evPidTgid:])
	ev := rawEvent{
		PID:      uint32(pidTgid >> 32),
		TID:      uint32(pidTgid),
		CgroupID: ne.Uint64(b[evCgroup:]),
		Ktime:    ne.Uint64(b[evKtime:]),
		PPID:     ne.Uint32(b[evPPID:]),
	}
	ev.Comm = cString(b[evComm : evComm+16])
	ev.CgName = cString(b[evCgName : evCgName+cgNameLen])
	port := ne.Uint16(b[evDport:])
	switch ne.Uint16(b[evFamily:]) {
	case afInet:
		ev.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[evDaddr:evDaddr+4])), port)
	case afInet6:
		// A dual-stack socket connecting to an IPv4 peer carries it
		// v4-mapped.
		ev.Dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[evDaddr6:evDaddr6+16])).Unmap(), port)
	default:
		return rawEvent{}, fmt.Errorf("record with address family %d", ne.Uint16(b[evFamily:]))
	}
	return ev, nil
}

// cString returns the NUL-terminated string at the start of b.
func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// enrich turns an event into a Conn, reading the process's details from
// /proc while it (usually) still exists.
func (w *ebpfWatcher) enrich(ev rawEvent, monoNow time.Duration, wallNow time.Time) Conn {
	c := Conn{
		Time:     monoToWall(ev.Ktime, monoNow, wallNow),
		PID:      int(ev.PID),
		PPID:     int(ev.PPID),
		Comm:     ev.Comm,
		CgroupID: ev.CgroupID,
		Dst:      ev.Dst,
	}
	kernelID := containerIDFromPath(ev.CgName)
	pi, err := readProcInfo(w.procRoot, c.PID)
	if err == nil && w.sameProcess(ev, pi) {
		if c.PPID == 0 {
			c.PPID = pi.PPID
		}
		c.Cmdline, c.Cgroup, c.ContainerID = pi.Cmdline, pi.Cgroup, pi.ContainerID
		if kernelID != "" && kernelID != pi.ContainerID {
			// What the kernel recorded at connect time wins.
			c.Cgroup, c.ContainerID = ev.CgName, kernelID
		}
		return c
	}
	// The process is gone, or its PID is another's now. The kernel
	// recorded its cgroup's name; else its parent (a shell in the same
	// container, as in a Dockerfile RUN step) may still be there.
	w.unenriched.Add(1)
	if kernelID != "" {
		c.Cgroup, c.ContainerID = ev.CgName, kernelID
		return c
	}
	if c.PPID > 0 {
		if cg, id, err := readCgroup(w.procRoot, c.PPID); err == nil {
			c.Cgroup, c.ContainerID = cg, id
		}
	}
	return c
}

// sameProcess reports whether /proc/PID still shows the process that
// connected: PIDs are reused, and the details of a process that took the
// PID of one that exited would tie its connection to the wrong container
// or command. The kernel's comm is the connecting thread's, so a thread
// that named itself is checked in /proc/PID/task/TID.
func (w *ebpfWatcher) sameProcess(ev rawEvent, pi procInfo) bool {
	if ev.Comm == "" || pi.Comm == ev.Comm {
		return true
	}
	if ev.TID == 0 || ev.TID == ev.PID {
		return false
	}
	comm, err := readBounded(filepath.Join(w.procRoot, strconv.Itoa(int(ev.PID)), "task", strconv.Itoa(int(ev.TID)), "comm"), 64)
	return err == nil && strings.TrimSuffix(string(comm), "\n") == ev.Comm
}

// monoToWall converts a CLOCK_MONOTONIC timestamp to wall-clock time, given
// both clocks read at one moment.
func monoToWall(ktime uint64, monoNow time.Duration, wallNow time.Time) time.Time {
	age := monoNow - time.Duration(ktime)
	if age < 0 || ktime > uint64(1<<63-1) {
		age = 0
	}
	return wallNow.Add(-age)
}

func monotonicNow() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// buildProgram assembles the tracepoint program: for a TCP socket entering
// SYN_SENT it writes an event to the ring buffer, or counts a drop when the
// ring is full.
func buildProgram(l sockStateLayout, task taskOffsets, eventsFD, dropsFD int) asm.Instructions {
	const (
		ctx   = asm.R6 // tracepoint record
		ev    = asm.R7 // reserved ring buffer record
		task8 = asm.R8 // current task_struct
		exit  = "exit"
		drop  = "drop"
		stack = asm.R10
	)
	insns := asm.Instructions{
		asm.Mov.Reg(ctx, asm.R1),
		loadField(asm.R2, ctx, l.Newstate),
		asm.JNE.Imm(asm.R2, tcpSynSent, exit),
		loadField(asm.R2, ctx, l.Protocol),
		asm.JNE.Imm(asm.R2, ipprotoTCP, exit),

		asm.LoadMapPtr(asm.R1, eventsFD),
		asm.Mov.Imm(asm.R2, eventBytes),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnRingbufReserve.Call(),
		asm.JEq.Imm(asm.R0, 0, drop),
		asm.Mov.Reg(ev, asm.R0),

		asm.FnGetCurrentPidTgid.Call(),
		asm.StoreMem(ev, evPidTgid, asm.R0, asm.DWord),
		asm.FnGetCurrentCgroupId.Call(),
		asm.StoreMem(ev, evCgroup, asm.R0, asm.DWord),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(ev, evKtime, asm.R0, asm.DWord),
		asm.Mov.Reg(asm.R1, ev),
		asm.Add.Imm(asm.R1, evComm),
		asm.Mov.Imm(asm.R2, 16),
		asm.FnGetCurrentComm.Call(),

		loadField(asm.R1, ctx, l.Family),
		asm.StoreMem(ev, evFamily, asm.R1, asm.Half),
		loadField(asm.R1, ctx, l.Dport),
		asm.StoreMem(ev, evDport, asm.R1, asm.Half),
	}
	insns = append(insns, copyField(ev, evDaddr, ctx, l.Daddr)...)
	insns = append(insns, copyField(ev, evDaddr6, ctx, l.DaddrV6)...)
	// Zero what may be left unread: ring memory is not cleared.
	insns = append(insns, asm.Mov.Imm(asm.R1, 0))
	for off := evPPID; off < eventBytes; off += 8 {
		insns = append(insns, asm.StoreMem(ev, int16(off), asm.R1, asm.DWord))
	}
	if task.hasParent() || task.hasCgroupName() {
		insns = append(insns,
			asm.FnGetCurrentTask.Call(),
			asm.Mov.Reg(task8, asm.R0),
		)
	}
	if task.hasParent() {
		insns = append(insns, readPtr(task8, task.RealParent, "cgname")...)
		insns = append(insns,
			// event.ppid = parent->tgid (left 0 when the read fails)
			asm.Add.Imm(asm.R3, int32(task.Tgid)),
			asm.Mov.Reg(asm.R1, ev),
			asm.Add.Imm(asm.R1, evPPID),
			asm.Mov.Imm(asm.R2, 4),
			asm.FnProbeReadKernel.Call(),
		)
	}
	insns = append(insns, asm.Mov.Imm(asm.R0, 0).WithSymbol("cgname"))
	if task.hasCgroupName() {
		base := task8
		for _, off := range []uint32{task.Cgroups, task.Subsys, task.CssCgroup, task.CgroupKn, task.KnName} {
			insns = append(insns, readPtr(base, off, "submit")...)
			base = asm.R3
		}
		insns = append(insns,
			asm.Mov.Reg(asm.R1, ev),
			asm.Add.Imm(asm.R1, evCgName),
			asm.Mov.Imm(asm.R2, cgNameLen),
			asm.FnProbeReadKernelStr.Call(),
		)
	}
	insns = append(insns,
		asm.Mov.Reg(asm.R1, ev).WithSymbol("submit"),
		asm.Mov.Imm(asm.R2, 0),
		asm.FnRingbufSubmit.Call(),
		asm.Ja.Label(exit),

		// drops[0]++ on this CPU
		asm.StoreImm(stack, -4, 0, asm.Word).WithSymbol(drop),
		asm.LoadMapPtr(asm.R1, dropsFD),
		asm.Mov.Reg(asm.R2, stack),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, exit),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),

		asm.Mov.Imm(asm.R0, 0).WithSymbol(exit),
		asm.Return(),
	)
	return insns
}

// readPtr loads the kernel pointer at base+off into R3 through the stack,
// jumping to fail when the read fails or the pointer is NULL.
func readPtr(base asm.Register, off uint32, fail string) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R3, base),
		asm.Add.Imm(asm.R3, int32(off)),
		asm.Mov.Reg(asm.R1, asm.R10),
		asm.Add.Imm(asm.R1, -8),
		asm.Mov.Imm(asm.R2, 8),
		asm.FnProbeReadKernel.Call(),
		asm.JNE.Imm(asm.R0, 0, fail),
		asm.LoadMem(asm.R3, asm.R10, -8, asm.DWord),
		asm.JEq.Imm(asm.R3, 0, fail),
	}
}

func sizeOf(n int) asm.Size {
	switch n {
	case 1:
		return asm.Byte
	case 2:
		return asm.Half
	case 4:
		return asm.Word
	default:
		return asm.DWord
	}
}

// loadField loads a scalar field (size 1, 2, 4 or 8, aligned, checked by
// sockStateLayoutFrom) zero-extended into dst.
func loadField(dst, ctx asm.Register, f traceField) asm.Instruction {
	return asm.LoadMem(dst, ctx, int16(f.Offset), sizeOf(f.Size))
}

// copyField copies a byte array field to the event in the widest loads and
// stores both offsets' alignment allows: tracepoint context reads must be
// aligned to their size.
func copyField(ev asm.Register, evOff int, ctx asm.Register, f traceField) asm.Instructions {
	var out asm.Instructions
	for done := 0; done < f.Size; {
		n := 8
		for n > 1 && ((f.Offset+done)%n != 0 || (evOff+done)%n != 0 || f.Size-done < n) {
			n /= 2
		}
		out = append(out,
			asm.LoadMem(asm.R1, ctx, int16(f.Offset+done), sizeOf(n)),
			asm.StoreMem(ev, int16(evOff+done), asm.R1, sizeOf(n)),
		)
		done += n
	}
	return out
}

// withTracefs runs f with tracefs mounted: the tracepoint's format and ID
// are read there, until the program is attached. When no tracefs (or
// debugfs with tracing/) is mounted, it mounts tracefs at
// /sys/kernel/tracing for f only, and unmounts it after: on a host (not in
// a pod's own mount namespace) the agent must not leave a mount behind.
func withTracefs(f func() error) error {
	if _, err := tracefsDir(); err == nil {
		return f()
	}
	const dir = "/sys/kernel/tracing"
	if err := unix.Mount("nodev", dir, "tracefs", 0, ""); err != nil {
		return &LoadError{Step: "tracefs", Err: fmt.Errorf("tracefs is not mounted and mounting it at %s failed: %w", dir, err)}
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	return f()
}

// tracefsDir finds the mounted tracefs the way cilium/ebpf does: a tracefs
// mount in /proc/self/mountinfo, a debugfs mount's tracing/, or the
// canonical paths.
func tracefsDir() (string, error) {
	if f, err := os.Open("/proc/self/mountinfo"); err == nil {
		defer f.Close()
		var debugfs string
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 0, 4096), 1<<20)
		for sc.Scan() {
			// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
			pre, post, ok := strings.Cut(sc.Text(), " - ")
			fields, fsFields := strings.Fields(pre), strings.Fields(post)
			if !ok || len(fields) < 5 || len(fsFields) < 1 || fields[3] != "/" {
				continue
			}
			mnt := unescapeMountinfo(fields[4])
			switch fsFields[0] {
			case "tracefs":
				return mnt, nil
			case "debugfs":
				if debugfs == "" {
					debugfs = filepath.Join(mnt, "tracing")
				}
			}
		}
		if debugfs != "" {
			if fi, err := os.Stat(debugfs); err == nil && fi.IsDir() {
				return debugfs, nil
			}
		}
	}
	for _, p := range []struct {
		dir   string
		magic int64
	}{
		{"/sys/kernel/tracing", unix.TRACEFS_MAGIC},
		{"/sys/kernel/debug/tracing", unix.TRACEFS_MAGIC},
		{"/sys/kernel/debug/tracing", unix.DEBUGFS_MAGIC},
	} {
		var st unix.Statfs_t
		if unix.Statfs(p.dir, &st) == nil && int64(st.Type) == p.magic {
			return p.dir, nil
		}
	}
	return "", errors.New("neither tracefs nor debugfs is mounted")
}

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + (c - '0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// readSockStateLayout parses the tracepoint's format file.
func readSockStateLayout() (sockStateLayout, error) {
	dir, err := tracefsDir()
	if err != nil {
		return sockStateLayout{}, err
	}
	name := filepath.Join(dir, "events", tpGroup, tpName, "format")
	data, err := readBounded(name, maxFormatBytes+1)
	if err != nil {
		return sockStateLayout{}, err
	}
	fields, err := parseTraceFormat(data)
	if err != nil {
		return sockStateLayout{}, fmt.Errorf("%s: %w", name, err)
	}
	l, err := sockStateLayoutFrom(fields)
	if err != nil {
		return sockStateLayout{}, fmt.Errorf("%s: %w", name, err)
	}
	return l, nil
}

// kernelTaskOffsets finds the task_struct, css_set, cgroup_subsys_state,
// cgroup and kernfs_node members the program reads in kernel BTF. Without
// the cgroup chain it still returns the parent offsets, with an error.
func kernelTaskOffsets() (taskOffsets, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return taskOffsets{}, err
	}
	structOf := func(name string) (*btf.Struct, error) {
		var s *btf.Struct
		if err := spec.TypeByName(name, &s); err != nil {
			return nil, fmt.Errorf("kernel BTF: %s: %w", name, err)
		}
		return s, nil
	}
	task, err := structOf("task_struct")
	if err != nil {
		return taskOffsets{}, err
	}
	var t taskOffsets
	var ok bool
	if t.RealParent, ok = memberOffset(task.Members, "real_parent", 8); !ok {
		return taskOffsets{}, errors.New("task_struct has no 8-byte real_parent")
	}
	if t.Tgid, ok = memberOffset(task.Members, "tgid", 4); !ok {
		return taskOffsets{}, errors.New("task_struct has no 4-byte tgid")
	}
	if err := cgroupNameOffsets(spec, task, structOf, &t); err != nil {
		t.Cgroups, t.Subsys, t.CssCgroup, t.CgroupKn, t.KnName = 0, 0, 0, 0, 0
		return t, err
	}
	return t, nil
}

// cgroupNameOffsets fills the offsets of
// task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->name.
func cgroupNameOffsets(spec *btf.Spec, task *btf.Struct, structOf func(string) (*btf.Struct, error), t *taskOffsets) error {
	var ok bool
	if t.Cgroups, ok = memberOffset(task.Members, "cgroups", 8); !ok {
		return errors.New("task_struct has no 8-byte cgroups")
	}
	var ids *btf.Enum
	if err := spec.TypeByName("cgroup_subsys_id", &ids); err != nil {
		return fmt.Errorf("kernel BTF: cgroup_subsys_id: %w", err)
	}
	memID := -1
	for _, v := range ids.Values {
		if v.Name == "memory_cgrp_id" {
			memID = int(v.Value)
		}
	}
	if memID < 0 || memID > 64 {
		return errors.New("kernel has no memory cgroup controller")
	}
	cssSet, err := structOf("css_set")
	if err != nil {
		return err
	}
	subsys, ok := memberOffset(cssSet.Members, "subsys", 0)
	if !ok {
		return errors.New("css_set has no subsys")
	}
	t.Subsys = subsys + uint32(8*memID)
	for _, m := range []struct {
		strct, member string
		dst           *uint32
	}{
		{"cgroup_subsys_state", "cgroup", &t.CssCgroup},
		{"cgroup", "kn", &t.CgroupKn},
		{"kernfs_node", "name", &t.KnName},
	} {
		s, err := structOf(m.strct)
		if err != nil {
			return err
		}
		if *m.dst, ok = memberOffset(s.Members, m.member, 8); !ok {
			return fmt.Errorf("%s has no 8-byte %s", m.strct, m.member)
		}
	}
	return nil
}

// memberOffset finds a named member of size bytes (any size when size is
// 0), looking into anonymous structs and unions, and returns its byte
// offset.
func memberOffset(members []btf.Member, name string, size int) (uint32, bool) {
	for _, m := range members {
		if m.BitfieldSize != 0 || m.Offset%8 != 0 {
			continue
		}
		if m.Name == name {
			n, err := btf.Sizeof(m.Type)
			return m.Offset.Bytes(), err == nil && (size == 0 || n == size)
		}
		if m.Name != "" {
			continue
		}
		var inner []btf.Member
		switch t := btf.UnderlyingType(m.Type).(type) {
		case *btf.Struct:
			inner = t.Members
		case *btf.Union:
			inner = t.Members
		default:
			continue
		}
		if off, ok := memberOffset(inner, name, size); ok {
			return m.Offset.Bytes() + off, true
		}
	}
	return 0, false
}

// hostPIDNamespace reports whether procRoot's self is in the initial PID
// namespace (PROC_PID_INIT_INO).
func hostPIDNamespace(procRoot string) bool {
	ino, err := nsInode(filepath.Join(procRoot, "self", "ns", "pid"))
	return err == nil && ino == 0xEFFFFFFC
}
