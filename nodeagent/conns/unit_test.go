//go:build linux

package conns

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// fakeProc builds a procfs tree in a temporary directory.
type fakeProc struct {
	t    *testing.T
	root string
}

func newFakeProc(t *testing.T) *fakeProc {
	p := &fakeProc{t: t, root: t.TempDir()}
	p.write("sys/net/ipv4/ip_local_port_range", "32768\t60999\n")
	return p
}

func (p *fakeProc) write(name, content string) {
	p.t.Helper()
	full := filepath.Join(p.root, name)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(full, []byte(content), 0o644); err != nil {
		p.t.Fatal(err)
	}
}

func (p *fakeProc) link(name, target string) {
	p.t.Helper()
	full := filepath.Join(p.root, name)
	if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
		p.t.Fatal(err)
	}
	os.Remove(full)
	if err := os.Symlink(target, full); err != nil {
		p.t.Fatal(err)
	}
}

// process adds /proc/PID with its netns, stat, cmdline, cgroup and socket
// fds.
func (p *fakeProc) process(pid, ppid int, netns uint64, comm, cmdline, cgroup string, sockets ...uint64) {
	dir := fmt.Sprint(pid)
	p.link(dir+"/ns/net", fmt.Sprintf("net:[%d]", netns))
	p.write(dir+"/stat", fmt.Sprintf("%d (%s) S %d %d 0 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0", pid, comm, ppid, pid))
	p.write(dir+"/cmdline", strings.ReplaceAll(cmdline, " ", "\x00")+"\x00")
	p.write(dir+"/cgroup", cgroup)
	p.link(dir+"/fd/0", "/dev/null")
	for i, ino := range sockets {
		p.link(fmt.Sprintf("%s/fd/%d", dir, i+3), fmt.Sprintf("socket:[%d]", ino))
	}
}

// tcpLine formats a socket the way the kernel does (little-endian host).
func tcpLine(sl int, local, remote string, state uint8, inode uint64) string {
	enc := func(s string) string {
		ap := netip.MustParseAddrPort(s)
		var hex strings.Builder
		b := ap.Addr().AsSlice()
		for i := 0; i < len(b); i += 4 {
			fmt.Fprintf(&hex, "%08X", binary.LittleEndian.Uint32(b[i:]))
		}
		return fmt.Sprintf("%s:%04X", hex.String(), ap.Port())
	}
	return fmt.Sprintf("%4d: %s %s %02X 00000000:00000000 00:00000000 00000000     0        0 %d 1 0000000000000000 20 0 0 10 -1\n",
		sl, enc(local), enc(remote), state, inode)
}

const tcpHeader = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"

func TestTCPLineMatchesKernel(t *testing.T) {
	// The fake tree's encoder against a line the kernel printed.
	got := tcpLine(2, "127.0.0.23:35045", "127.0.0.1:42216", tcpEstablished, 0)
	if want := "1700007F:88E5 0100007F:A4E8 01"; !strings.Contains(got, want) {
		t.Fatalf("tcpLine = %q, want it to contain %q", got, want)
	}
}

func TestProcfsSample(t *testing.T) {
	const hostNS, ctrNS = 4026531840, 4026532999
	id := strings.Repeat("ab", 32)
	p := newFakeProc(t)
	p.process(100, 1, hostNS, "wget", "wget -q http://203.0.113.5/", "0::/system.slice/cron.service\n", 1001)
	p.process(101, 1, hostNS, "curl", "curl https://192.0.2.44:8443/", "0::/user.slice\n", 1003)
	p.process(102, 1, hostNS, "sshd", "sshd", "0::/system.slice/ssh.service\n", 500, 501)
	p.process(103, 1, hostNS, "git", "git fetch", "0::/\n", 1006, 507, 508)
	p.process(200, 150, ctrNS, "apk", "apk add git", "12:pids:/docker/"+id+"\n0::/\n", 2001)
	host := tcpHeader +
		tcpLine(0, "0.0.0.0:8080", "0.0.0.0:0", tcpListen, 500) +
		tcpLine(1, "10.0.0.1:8080", "10.0.0.9:40000", tcpEstablished, 501) + // accepted: inbound
		tcpLine(2, "10.0.0.1:40001", "203.0.113.5:80", tcpEstablished, 1001) + // outbound
		tcpLine(3, "10.0.0.1:22", "10.0.0.9:50000", tcpEstablished, 502) + // not ephemeral: inbound
		tcpLine(4, "10.0.0.1:40002", "203.0.113.6:80", 0x06, 0) + // TIME_WAIT
		tcpLine(5, "10.0.0.1:40003", "203.0.113.7:80", tcpEstablished, 0) + // no owner socket
		tcpLine(6, "127.0.0.5:40020", "0.0.0.0:0", tcpListen, 505) + // listener on one address
		tcpLine(7, "127.0.0.5:40020", "127.0.0.9:50001", tcpEstablished, 507) + // accepted by it
		tcpLine(8, "10.0.0.1:40020", "198.51.100.20:22", tcpEstablished, 1006) // same port, other address: outbound
	host6 := strings.Replace(tcpHeader, "rem_address", "remote_address", 1) +
		tcpLine(0, "[::ffff:10.0.0.1]:40010", "[::ffff:192.0.2.44]:8443", tcpEstablished, 1003) +
		tcpLine(1, "[2001:db8::1]:40011", "[2001:db8::2]:443", tcpSynSent, 1004) + // owner gone
		tcpLine(2, "[::]:40030", "[::]:0", tcpListen, 506) + // dual-stack listener
		tcpLine(3, "[::ffff:10.0.0.1]:40030", "[::ffff:10.0.0.9]:50002", tcpEstablished, 508) // accepted IPv4
	ctr := tcpHeader +
		tcpLine(0, "172.17.0.2:1000", "198.51.100.7:443", tcpSynSent, 2001) // SYN_SENT: always outbound
	for _, pid := range []string{"100", "101", "102", "103"} {
		p.write(pid+"/net/tcp", host)
		p.write(pid+"/net/tcp6", host6)
	}
	p.write("200/net/tcp", ctr) // no tcp6: IPv6 disabled in the container

	at := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	w := newProcfsWatcher(Options{ProcRoot: p.root, Log: testLogger(t)}.withDefaults())
	w.now = func() time.Time { return at }
	seen := make(map[connKey]bool)
	sample := func() []Conn {
		t.Helper()
		var got []Conn
		if err := w.sample(context.Background(), seen, func(c Conn) { got = append(got, c) }); err != nil {
			t.Fatalf("sample: %v", err)
		}
		sort.Slice(got, func(i, j int) bool { return got[i].Dst.Compare(got[j].Dst) < 0 })
		return got
	}

	want := []Conn{
		{Time: at, PID: 101, PPID: 1, Comm: "curl", Cmdline: "curl https://192.0.2.44:8443/", Cgroup: "/user.slice", Dst: netip.MustParseAddrPort("192.0.2.44:8443")},
		{Time: at, PID: 200, PPID: 150, Comm: "apk", Cmdline: "apk add git", ContainerID: id, Cgroup: "/docker/" + id, Dst: netip.MustParseAddrPort("198.51.100.7:443")},
		{Time: at, PID: 103, PPID: 1, Comm: "git", Cmdline: "git fetch", Cgroup: "/", Dst: netip.MustParseAddrPort("198.51.100.20:22")},
		{Time: at, PID: 100, PPID: 1, Comm: "wget", Cmdline: "wget -q http://203.0.113.5/", Cgroup: "/system.slice/cron.service", Dst: netip.MustParseAddrPort("203.0.113.5:80")},
		{Time: at, Dst: netip.MustParseAddrPort("[2001:db8::2]:443")},
	}
	if diff := cmp.Diff(want, sample(), addrPorts); diff != "" {
		t.Fatalf("first sample (-want +got):\n%s", diff)
	}
	if st := w.Stats(); st != (Stats{Reported: 5, Unenriched: 1}) {
		t.Errorf("Stats() = %+v, want 5 reported, 1 unenriched", st)
	}
	if got := sample(); len(got) != 0 {
		t.Errorf("second sample reported again:\n%s", dump(got))
	}

	// wget's connection closes and a new one opens: only the new one is
	// reported; when the closed one's socket shows up again it is new.
	at = at.Add(time.Second)
	p.write("100/net/tcp", strings.Replace(host, tcpLine(2, "10.0.0.1:40001", "203.0.113.5:80", tcpEstablished, 1001),
		tcpLine(2, "10.0.0.1:40005", "203.0.113.9:80", tcpSynSent, 1001), 1))
	got := sample()
	if len(got) != 1 || got[0].Dst != netip.MustParseAddrPort("203.0.113.9:80") || got[0].PID != 100 || !got[0].Time.Equal(at) {
		t.Errorf("after a new connection, sample =\n%s\nwant one from pid 100 to 203.0.113.9:80 at %v", dump(got), at)
	}
	p.write("100/net/tcp", host)
	if got := sample(); len(got) != 1 || got[0].Dst != netip.MustParseAddrPort("203.0.113.5:80") {
		t.Errorf("after the old connection came back, sample =\n%s", dump(got))
	}
}

func TestProcfsSampleErrors(t *testing.T) {
	p := newFakeProc(t)
	p.process(100, 1, 4026531840, "sh", "sh", "0::/\n")
	p.write("100/net/tcp", "garbage\n")
	w := newProcfsWatcher(Options{ProcRoot: p.root, Log: testLogger(t)}.withDefaults())
	err := w.sample(context.Background(), make(map[connKey]bool), func(Conn) {})
	if err == nil || !strings.Contains(err.Error(), "no TCP table readable") {
		t.Errorf("sample with only a broken table = %v, want no TCP table readable", err)
	}
	// Run reports the same error instead of sampling nothing forever.
	if err := w.Run(context.Background(), func(Conn) {}); err == nil {
		t.Errorf("Run with only a broken table = nil, want an error")
	}
}

// A second process of the same namespace stands in for one whose tables
// cannot be read (it exited between listing and reading).
func TestProcfsNamespaceReadThroughAnotherProcess(t *testing.T) {
	p := newFakeProc(t)
	p.process(100, 1, 4026531840, "gone", "gone", "0::/\n")
	p.process(101, 1, 4026531840, "wget", "wget", "0::/\n", 7)
	p.write("101/net/tcp", tcpHeader+tcpLine(0, "10.0.0.1:40001", "203.0.113.5:80", tcpEstablished, 7))
	w := newProcfsWatcher(Options{ProcRoot: p.root, Log: testLogger(t)}.withDefaults())
	var got []Conn
	if err := w.sample(context.Background(), make(map[connKey]bool), func(c Conn) { got = append(got, c) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].PID != 101 {
		t.Errorf("sample = %s, want one connection from pid 101", dump(got))
	}
}

// addrPorts compares netip.AddrPorts, whose fields cmp cannot see, with ==.
var addrPorts = cmpopts.EquateComparable(netip.AddrPort{})

func dump(cs []Conn) string {
	var b strings.Builder
	for _, c := range cs {
		fmt.Fprintf(&b, "  %+v\n", c)
	}
	return b.String()
}

func TestDecodeEvent(t *testing.T) {
	rec := func(family uint16, port uint16, v4 string, v6 string) []byte {
		b := make([]byte, eventBytes)
		ne := binary.NativeEndian
		ne.PutUint64(b[evPidTgid:], 4242<<32|4243)
		ne.PutUint64(b[evCgroup:], 77)
		ne.PutUint64(b[evKtime:], 123456789)
		copy(b[evComm:], "wget")
		ne.PutUint16(b[evFamily:], family)
		ne.PutUint16(b[evDport:], port)
		if v4 != "" {
			a := netip.MustParseAddr(v4).As4()
			copy(b[evDaddr:], a[:])
		}
		if v6 != "" {
			a := netip.MustParseAddr(v6).As16()
			copy(b[evDaddr6:], a[:])
		}
		ne.PutUint32(b[evPPID:], 4241)
		copy(b[evCgName:], "docker-"+cid+".scope")
		return b
	}
	base := rawEvent{PID: 4242, TID: 4243, PPID: 4241, CgroupID: 77, Ktime: 123456789, Comm: "wget", CgName: "docker-" + cid + ".scope"}
	for _, tc := range []struct {
		name    string
		in      []byte
		wantDst string
	}{
		{"ipv4", rec(afInet, 8080, "127.0.0.23", ""), "127.0.0.23:8080"},
		{"ipv6", rec(afInet6, 443, "", "2001:db8::2"), "[2001:db8::2]:443"},
		{"v4-mapped", rec(afInet6, 80, "", "::ffff:127.0.0.23"), "127.0.0.23:80"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := decodeEvent(tc.in)
			want := base
			want.Dst = netip.MustParseAddrPort(tc.wantDst)
			if err != nil || got != want {
				t.Errorf("decodeEvent = %+v, %v, want %+v", got, err, want)
			}
		})
	}
	full := rec(afInet, 1, "1.2.3.4", "")
	copy(full[evComm:], "sixteen-byte-nam")
	if got, err := decodeEvent(full); err != nil || got.Comm != "sixteen-byte-nam" {
		t.Errorf("decodeEvent with a 16-byte comm = %q, %v", got.Comm, err)
	}
	if _, err := decodeEvent(rec(99, 1, "", "")); err == nil {
		t.Errorf("decodeEvent with family 99: no error")
	}
	if _, err := decodeEvent(make([]byte, eventBytes-1)); err == nil {
		t.Errorf("decodeEvent of a short record: no error")
	}

	// A record the sensor cannot decode is skipped, not the end of the
	// sensor: the next one is still reported.
	w := &ebpfWatcher{procRoot: t.TempDir(), log: slog.New(slog.DiscardHandler)}
	var got []Conn
	for _, r := range [][]byte{rec(99, 1, "", ""), make([]byte, 3), rec(afInet, 8080, "127.0.0.23", "")} {
		w.record(r, func(c Conn) { got = append(got, c) })
	}
	if len(got) != 1 || got[0].Dst.String() != "127.0.0.23:8080" || w.Stats().Reported != 1 {
		t.Errorf("records: reported %+v, stats %+v; want the third only", got, w.Stats())
	}
}

func TestMonoToWall(t *testing.T) {
	wall := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		ktime   uint64
		monoNow time.Duration
		want    time.Time
	}{
		{ktime: uint64(10 * time.Second), monoNow: 12 * time.Second, want: wall.Add(-2 * time.Second)},
		{ktime: uint64(12 * time.Second), monoNow: 12 * time.Second, want: wall},
		// An event stamped after the clocks were read is not in the future.
		{ktime: uint64(13 * time.Second), monoNow: 12 * time.Second, want: wall},
		{ktime: 1 << 63, monoNow: 12 * time.Second, want: wall},
	} {
		if got := monoToWall(tc.ktime, tc.monoNow, wall); !got.Equal(tc.want) {
			t.Errorf("monoToWall(%d, %v, %v) = %v, want %v", tc.ktime, tc.monoNow, wall, got, tc.want)
		}
	}
}

// TestEnrichFromParent: when the connecting process is gone, the container
// comes from its parent, and the kernel's parent PID is kept.
func TestEnrichFromParent(t *testing.T) {
	id := strings.Repeat("0f", 32)
	p := newFakeProc(t)
	p.process(4241, 4200, 4026531840, "sh", "/bin/sh -c wget http://127.0.0.23/x", "0::/\n5:memory:/docker/"+id+"\n")
	p.process(4250, 4241, 4026531840, "wget", "wget -q http://127.0.0.23/x", "5:memory:/docker/"+id+"\n")
	w := &ebpfWatcher{procRoot: p.root}
	wall := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	dst := netip.MustParseAddrPort("127.0.0.23:80")

	got := w.enrich(rawEvent{PID: 4242, PPID: 4241, Comm: "wget", CgroupID: 9, Ktime: 5, Dst: dst}, 5, wall)
	want := Conn{Time: wall, PID: 4242, PPID: 4241, Comm: "wget", CgroupID: 9, ContainerID: id, Cgroup: "/docker/" + id, Dst: dst}
	if diff := cmp.Diff(want, got, addrPorts); diff != "" {
		t.Errorf("enrich of an exited process (-want +got):\n%s", diff)
	}
	// The kernel's cgroup name wins over the parent's cgroup.
	own := strings.Repeat("1e", 32)
	got = w.enrich(rawEvent{PID: 4242, PPID: 4241, Comm: "wget", CgName: own, Dst: dst}, 0, wall)
	want = Conn{Time: wall, PID: 4242, PPID: 4241, Comm: "wget", ContainerID: own, Cgroup: own, Dst: dst}
	if diff := cmp.Diff(want, got, addrPorts); diff != "" {
		t.Errorf("enrich of an exited process with a cgroup name (-want +got):\n%s", diff)
	}
	// A live process: its own details; the parent from /proc when the
	// kernel did not give one.
	got = w.enrich(rawEvent{PID: 4250, Comm: "wget", Dst: dst}, 0, wall)
	want = Conn{Time: wall, PID: 4250, PPID: 4241, Comm: "wget", Cmdline: "wget -q http://127.0.0.23/x", ContainerID: id, Cgroup: "/docker/" + id, Dst: dst}
	if diff := cmp.Diff(want, got, addrPorts); diff != "" {
		t.Errorf("enrich of a live process (-want +got):\n%s", diff)
	}
	// PID 4250 exited and was reused by a process of another container:
	// its /proc details are not the connection's; the kernel's cgroup name
	// and parent are.
	got = w.enrich(rawEvent{PID: 4250, PPID: 4100, Comm: "curl", CgName: "docker-" + own + ".scope", Dst: dst}, 0, wall)
	want = Conn{Time: wall, PID: 4250, PPID: 4100, Comm: "curl", ContainerID: own, Cgroup: "docker-" + own + ".scope", Dst: dst}
	if diff := cmp.Diff(want, got, addrPorts); diff != "" {
		t.Errorf("enrich of a reused PID (-want +got):\n%s", diff)
	}
	// A thread that named itself is still its process.
	p.write("4250/task/4251/comm", "worker\n")
	got = w.enrich(rawEvent{PID: 4250, TID: 4251, Comm: "worker", Dst: dst}, 0, wall)
	if got.Cmdline != "wget -q http://127.0.0.23/x" || got.ContainerID != id {
		t.Errorf("enrich of a named thread = %+v, want its process's details", got)
	}
	if st := w.Stats(); st.Unenriched != 3 {
		t.Errorf("Stats().Unenriched = %d, want 3", st.Unenriched)
	}
}

func TestKernelTaskOffsets(t *testing.T) {
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		t.Skipf("no kernel BTF: %v", err)
	}
	off, err := kernelTaskOffsets()
	if err != nil {
		t.Fatalf("kernelTaskOffsets: %v", err)
	}
	// Both sit well inside task_struct, which is a few KiB.
	if off.RealParent == 0 || off.Tgid == 0 || off.RealParent > 16<<10 || off.Tgid > 16<<10 || off.RealParent%8 != 0 || off.Tgid%4 != 0 {
		t.Errorf("kernelTaskOffsets = %+v, implausible", off)
	}
	if !off.hasCgroupName() || off.Cgroups%8 != 0 || off.Subsys%8 != 0 || off.CssCgroup%8 != 0 || off.CgroupKn%8 != 0 || off.KnName%8 != 0 {
		t.Errorf("kernelTaskOffsets = %+v, want aligned cgroup name offsets", off)
	}
}

func TestForceProcfs(t *testing.T) {
	w, fallback := New(Options{ForceProcfs: true})
	if fallback != nil || w.Sensor() != SensorProcfs {
		t.Fatalf("New(ForceProcfs) = %s, %v, want procfs, nil", w.Sensor(), fallback)
	}
	pw := w.(*procfsWatcher)
	if pw.procRoot != "/proc" || pw.interval != time.Second {
		t.Errorf("defaults: ProcRoot %q, Interval %v, want /proc, 1s", pw.procRoot, pw.interval)
	}
}
