package nodeagent

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/nodeagent/conns"
	"buildguard.dev/buildguard/nodereport"
)

func TestAttributor(t *testing.T) {
	t0 := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	dst := netip.MustParseAddrPort("127.0.0.23:8080")
	stepCtr := hexID('2')
	classic := BuildInfo{Tool: "docker", ImageID: "sha256:" + hexID('d'), Started: at(0), Finished: at(30),
		ContainerIDs: []string{hexID('1'), stepCtr}, PIDs: []int{100}}
	buildkit := BuildInfo{Tool: "buildkit", ImageID: "sha256:" + hexID('e'), Started: at(20), Finished: at(30)}
	conn := func(s, pid, ppid int, ctr string) conns.Conn {
		return conns.Conn{Time: at(s), PID: pid, PPID: ppid, Comm: "wget", ContainerID: ctr, CgroupID: 77, Dst: dst}
	}
	tests := []struct {
		name      string
		build     BuildInfo
		before    []conns.Conn // seen before the build is known
		after     []conns.Conn // seen after
		wantAtBld []int        // PIDs of the connections reported with the build
		wantLater []int        // PIDs of those reported as they came
		wantPIDs  []int        // the build item's PIDs
	}{
		{
			name:  "a step container's connection, by a full or a short container ID",
			build: classic,
			before: []conns.Conn{
				conn(10, 200, 1, stepCtr), conn(11, 201, 1, stepCtr[:12]),
				conn(12, 300, 1, hexID('9')), // another container
				conn(13, 301, 1, ""),         // the host
			},
			wantAtBld: []int{200, 201}, wantPIDs: []int{100, 200, 201},
		},
		{
			name:      "the build's process and its children",
			build:     classic,
			before:    []conns.Conn{conn(10, 100, 1, ""), conn(11, 150, 100, ""), conn(12, 151, 150, ""), conn(13, 152, 2, "")},
			wantAtBld: []int{100, 150, 151}, wantPIDs: []int{100, 150, 151},
		},
		{
			name:      "late connections of a known build",
			build:     classic,
			after:     []conns.Conn{conn(31, 400, 1, stepCtr), conn(31, 401, 1, "")},
			wantLater: []int{400}, wantPIDs: []int{100},
		},
		{
			name:      "a build without containers takes the node's connections in its span and the window before",
			build:     buildkit,
			before:    []conns.Conn{conn(-400, 1, 1, ""), conn(-200, 2, 1, ""), conn(25, 3, 1, hexID('9'))},
			after:     []conns.Conn{conn(29, 4, 1, ""), conn(40, 5, 1, "")},
			wantAtBld: []int{2, 3}, wantLater: []int{4}, wantPIDs: nil,
		},
		{
			// PIDs are reused: a process of another container, or one
			// after the build ended, that got the build's PID is not the
			// build's (the server would judge the build by it).
			name:     "a reused PID in another container or after the build is not the build's",
			build:    classic,
			before:   []conns.Conn{conn(10, 100, 1, hexID('9')), conn(11, 160, 100, hexID('9'))},
			after:    []conns.Conn{conn(60, 100, 1, ""), conn(61, 170, 100, "")},
			wantPIDs: []int{100},
		},
		{
			name:   "connections without a destination port are not reported",
			build:  classic,
			before: []conns.Conn{{Time: at(10), PID: 200, ContainerID: stepCtr, Dst: netip.AddrPortFrom(dst.Addr(), 0)}},
			// nothing
			wantPIDs: []int{100},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := &Attributor{Sensor: "ebpf"}
			for _, c := range tt.before {
				if got := a.Conn(c, c.Time); len(got) != 0 {
					t.Errorf("connection of pid %d reported before any build", c.PID)
				}
			}
			item, withBuild := a.Build(tt.build, at(31))
			var later []nodereport.Connection
			for _, c := range tt.after {
				later = append(later, a.Conn(c, at(32))...)
			}
			if got := pids(withBuild); !slices.Equal(got, tt.wantAtBld) {
				t.Errorf("reported with the build: pids %v, want %v", got, tt.wantAtBld)
			}
			if got := pids(later); !slices.Equal(got, tt.wantLater) {
				t.Errorf("reported later: pids %v, want %v", got, tt.wantLater)
			}
			if !slices.Equal(item.PIDs, tt.wantPIDs) {
				t.Errorf("build pids %v, want %v", item.PIDs, tt.wantPIDs)
			}
			if item.EventID != "docker-build/"+tt.build.ImageID || item.Tool != tt.build.Tool || item.Started != nodereport.Time(tt.build.Started) {
				t.Errorf("build item %+v", item)
			}
		})
	}
}

func pids(cs []nodereport.Connection) []int {
	var out []int
	for _, c := range cs {
		out = append(out, c.PID)
	}
	return out
}

func TestAttributorItem(t *testing.T) {
	a := &Attributor{Sensor: "procfs"}
	t0 := time.Unix(1795688103, 412907311)
	c := conns.Conn{Time: t0, PID: 48213, Comm: "wget", Cmdline: "wget -q http://[::ffff:203.0.113.9]:8080/p", CgroupID: 10422,
		ContainerID: hexID('9'), Dst: netip.MustParseAddrPort("[::ffff:203.0.113.9]:8080")}
	got := a.item(c)
	want := nodereport.Connection{EventID: "procfs/48213/1795688103412907311/[::ffff:203.0.113.9]:8080", Time: "2026-11-26T10:15:03.412907311Z",
		Process: "wget", PID: 48213, Cmdline: c.Cmdline, ContainerID: hexID('9'), CgroupID: "10422", DestIP: "203.0.113.9", DestPort: 8080}
	if got != want {
		t.Errorf("item\n got %+v\nwant %+v", got, want)
	}
}

func TestAttributorBounds(t *testing.T) {
	a := &Attributor{Sensor: "ebpf", MaxConns: 3, Window: time.Minute}
	t0 := time.Now()
	for i := range 5 {
		a.Conn(conns.Conn{Time: t0, PID: i + 1, Dst: netip.MustParseAddrPort("127.0.0.1:80")}, t0)
	}
	if len(a.conns) != 3 || a.Evicted != 2 {
		t.Errorf("%d kept, %d evicted; want 3, 2", len(a.conns), a.Evicted)
	}
	a.Build(BuildInfo{Tool: "docker", Started: t0, Finished: t0, ContainerIDs: []string{"x"}}, t0)
	// After the window, connections and builds are forgotten.
	a.Conn(conns.Conn{Time: t0.Add(2 * time.Minute), PID: 9, Dst: netip.MustParseAddrPort("127.0.0.1:80")}, t0.Add(2*time.Minute))
	if len(a.conns) != 1 || len(a.builds) != 0 {
		t.Errorf("after the window: %d connections, %d builds kept; want 1, 0", len(a.conns), len(a.builds))
	}
}

func TestClip(t *testing.T) {
	for _, tt := range []struct {
		in   string
		n    int
		want string
	}{{"abc", 5, "abc"}, {"abcdef", 3, "abc"}, {"aé", 2, "a"}, {"é", 1, ""}} {
		if got := clip(tt.in, tt.n); got != tt.want {
			t.Errorf("clip(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
	long := make([]string, 2000)
	for i := range long {
		long[i] = string(make([]byte, 5000))
	}
	got := clipSteps(long)
	total := 0
	for _, s := range got {
		total += len(s)
		if len(s) > maxText {
			t.Fatalf("a step of %d bytes kept", len(s))
		}
	}
	if total > maxStepsBytes || len(got) != maxStepsBytes/maxText {
		t.Errorf("clipSteps kept %d steps, %d bytes", len(got), total)
	}
}

// Command lines of up to 4 KiB each add up: the connections kept are
// bounded in bytes too, the oldest pushed out and counted.
func TestAttributorBoundsBytes(t *testing.T) {
	a := &Attributor{Sensor: "ebpf", MaxBytes: 3 * (200 + 1000), Window: time.Minute}
	t0 := time.Now()
	for i := range 5 {
		a.Conn(conns.Conn{Time: t0, PID: i + 1, Cmdline: strings.Repeat("x", 1000), Dst: netip.MustParseAddrPort("127.0.0.1:80")}, t0)
	}
	if len(a.conns) != 3 || a.Evicted != 2 || a.conns[0].c.PID != 3 {
		t.Errorf("%d kept from pid %d, %d evicted; want 3 from pid 3, 2", len(a.conns), a.conns[0].c.PID, a.Evicted)
	}
	// Expired ones give their bytes back.
	a.Conn(conns.Conn{Time: t0.Add(2 * time.Minute), PID: 9, Dst: netip.MustParseAddrPort("127.0.0.1:80")}, t0.Add(2*time.Minute))
	if len(a.conns) != 1 || a.keptBytes != 200 {
		t.Errorf("after the window: %d kept, %d bytes; want 1, 200", len(a.conns), a.keptBytes)
	}
}
