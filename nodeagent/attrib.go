package nodeagent

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"buildguard.dev/buildguard/nodeagent/conns"
	"buildguard.dev/buildguard/nodereport"
)

// Attributor ties the node's outbound connections to the builds the Docker
// watcher finds. A build is only known once its image exists, after its
// steps made their connections, so recent connections are kept in memory
// (bounded by Window and MaxConns) and matched when the build arrives;
// builds are kept for Window too, for connections the sensor reports late.
//
// A connection belongs to a build when its container is one of the build's
// step containers, or its process or parent is one of the build's
// processes. For a build without containers or processes (BuildKit,
// whose steps run outside Docker's containers), every connection of the
// node during the build, and Window before it, belongs to it: the server
// judges those by node and time (nodeEvidence.buildWindow). Connections
// that belong to no build are not reported.
type Attributor struct {
	// Sensor names the connection sensor in each connection's event ID.
	Sensor string
	// Window is how long connections and builds are kept for matching.
	// The default is 5m, the policy's default build window.
	Window time.Duration
	// MaxConns bounds the connections kept. The default is 16384.
	MaxConns int
	// MaxBytes bounds the memory of the connections kept (command lines
	// of up to 4 KiB each add up). The default is 32 MiB.
	MaxBytes int

	conns     []keptConn // oldest first
	keptBytes int
	builds    []*keptBuild
	// Evicted counts connections pushed out by MaxConns or MaxBytes
	// before Window.
	Evicted uint64
}

type keptConn struct {
	c        conns.Conn
	reported bool
}

// size estimates the memory k holds.
func (k keptConn) size() int {
	return 200 + len(k.c.Comm) + len(k.c.Cmdline) + len(k.c.ContainerID) + len(k.c.Cgroup)
}

type keptBuild struct {
	info BuildInfo
	ctrs []string
	pids map[int]bool
	// seen is when the build arrived; it is kept for Window after.
	seen time.Time
}

func (a *Attributor) window() time.Duration { return durOr(a.Window, 5*time.Minute) }

func (a *Attributor) maxBytes() int {
	if a.MaxBytes <= 0 {
		return 32 << 20
	}
	return a.MaxBytes
}

func (a *Attributor) maxConns() int {
	if a.MaxConns <= 0 {
		return 16384
	}
	return a.MaxConns
}

// Conn takes a connection the sensor saw; it returns it as a report item
// when it belongs to a build already known.
func (a *Attributor) Conn(c conns.Conn, now time.Time) []nodereport.Connection {
	a.expire(now)
	if !c.Dst.Addr().IsValid() || c.Dst.Port() == 0 {
		return nil // nothing the server could take
	}
	k := keptConn{c: c}
	for len(a.conns) > 0 && (len(a.conns) >= a.maxConns() || a.keptBytes+k.size() > a.maxBytes()) {
		a.keptBytes -= a.conns[0].size()
		a.conns = a.conns[1:]
		a.Evicted++
	}
	var out []nodereport.Connection
	for _, b := range a.builds {
		if b.owns(c, a.window()) {
			k.reported = true
			b.adopt(c)
			out = append(out, a.item(c))
			break
		}
	}
	a.conns = append(a.conns, k)
	a.keptBytes += k.size()
	return out
}

// Build takes a build; it returns the build as a report item, with the
// processes of the connections found to be its own, and those
// connections.
func (a *Attributor) Build(info BuildInfo, now time.Time) (nodereport.Build, []nodereport.Connection) {
	a.expire(now)
	b := &keptBuild{info: info, ctrs: info.ContainerIDs, pids: map[int]bool{}, seen: now}
	for _, p := range info.PIDs {
		b.pids[p] = true
	}
	var out []nodereport.Connection
	// Twice: a connection of a child can come before its parent's was
	// adopted.
	for range 2 {
		for i := range a.conns {
			k := &a.conns[i]
			if k.reported || !b.owns(k.c, a.window()) {
				continue
			}
			k.reported = true
			b.adopt(k.c)
			out = append(out, a.item(k.c))
		}
	}
	a.builds = append(a.builds, b)
	item := nodereport.Build{
		EventID:      "docker-build/" + info.ImageID,
		Tool:         info.Tool,
		ImageID:      info.ImageID,
		Tags:         info.Tags,
		Started:      nodereport.Time(info.Started),
		ContainerIDs: info.ContainerIDs,
		Steps:        clipSteps(info.Steps),
	}
	if info.ImageID == "" {
		item.EventID = fmt.Sprintf("docker-build/%d", info.Started.UnixNano())
	}
	if !info.Finished.IsZero() {
		item.Finished = nodereport.Time(info.Finished)
	}
	for _, p := range info.PIDs {
		item.PIDs = append(item.PIDs, p)
	}
	// The processes whose connections were adopted by container or
	// process are the build's too; those adopted by time alone are not
	// known to be.
	byTime := len(info.ContainerIDs) == 0 && len(info.PIDs) == 0
	cgroups := map[uint64]bool{}
	for _, c := range out {
		if c.PID > 0 && !byTime && !containsInt(item.PIDs, c.PID) {
			item.PIDs = append(item.PIDs, c.PID)
		}
		if c.CgroupID != "" {
			n, _ := strconv.ParseUint(c.CgroupID, 10, 64)
			cgroups[n] = true
		}
	}
	// One cgroup for all of it (a one-step build) is the build's cgroup.
	if len(cgroups) == 1 && !byTime {
		for n := range cgroups {
			item.CgroupID = strconv.FormatUint(n, 10)
		}
	}
	return item, out
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// owns reports whether connection c is the build's.
func (b *keptBuild) owns(c conns.Conn, window time.Duration) bool {
	if c.ContainerID != "" {
		for _, id := range b.ctrs {
			if strings.HasPrefix(id, c.ContainerID) || strings.HasPrefix(c.ContainerID, id) {
				return true
			}
		}
	}
	if ((c.PID > 0 && b.pids[c.PID]) || (c.PPID > 0 && b.pids[c.PPID])) && b.ownsByPID(c) {
		return true
	}
	if len(b.ctrs) > 0 || len(b.pids) > 0 {
		return false
	}
	start, end := b.info.Started, b.info.Finished
	if end.IsZero() {
		end = start
	}
	return !c.Time.Before(start.Add(-window)) && !c.Time.After(end)
}

// pidSlack is how far a connection tied to a build by its process may lie
// outside the build's span: the sensors' clocks are converted, and procfs
// samples a connection up to a second after it was made.
const pidSlack = 2 * time.Second

// ownsByPID reports whether c, whose process or parent is one of the
// build's, can be the build's. PIDs are reused, and a build is kept for
// Window after it ended: a process of another container, or one that
// connects outside the build's span, only got a PID the build once had,
// and reporting it would make the server judge the build by it.
func (b *keptBuild) ownsByPID(c conns.Conn) bool {
	if c.ContainerID != "" && len(b.ctrs) > 0 {
		return false // its container is known and is none of the build's (checked first)
	}
	if !b.info.Started.IsZero() && c.Time.Before(b.info.Started.Add(-pidSlack)) {
		return false
	}
	return b.info.Finished.IsZero() || !c.Time.After(b.info.Finished.Add(pidSlack))
}

// adopt makes c's process one of the build's, so that its children's
// connections are the build's too.
func (b *keptBuild) adopt(c conns.Conn) {
	if c.PID > 0 && (len(b.ctrs) > 0 || len(b.pids) > 0) {
		b.pids[c.PID] = true
	}
}

// expire forgets connections and builds older than the window.
func (a *Attributor) expire(now time.Time) {
	cut := now.Add(-a.window())
	i := 0
	for i < len(a.conns) && a.conns[i].c.Time.Before(cut) {
		a.keptBytes -= a.conns[i].size()
		i++
	}
	if i > 0 {
		a.conns = append(a.conns[:0], a.conns[i:]...)
	}
	kept := a.builds[:0]
	for _, b := range a.builds {
		if !b.seen.Before(cut) {
			kept = append(kept, b)
		}
	}
	clear(a.builds[len(kept):])
	a.builds = kept
}

// item is c as a report item.
func (a *Attributor) item(c conns.Conn) nodereport.Connection {
	out := nodereport.Connection{
		EventID:     fmt.Sprintf("%s/%d/%d/%s", a.Sensor, c.PID, c.Time.UnixNano(), c.Dst),
		Time:        nodereport.Time(c.Time),
		Process:     c.Comm,
		PID:         c.PID,
		Cmdline:     clip(c.Cmdline, maxText),
		ContainerID: c.ContainerID,
		DestIP:      c.Dst.Addr().Unmap().WithZone("").String(),
		DestPort:    int(c.Dst.Port()),
	}
	if c.CgroupID != 0 {
		out.CgroupID = strconv.FormatUint(c.CgroupID, 10)
	}
	return out
}

// maxText is what the server keeps of a command line or a build step;
// maxStepsBytes bounds a build's steps, so that one build fits a report.
const (
	maxText       = 4096
	maxStepsBytes = 512 << 10
)

// clip cuts s to at most n bytes at a UTF-8 character boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// clipSteps keeps the first steps (the server keeps the first 1,000), each
// cut to maxText, up to maxStepsBytes in all.
func clipSteps(steps []string) []string {
	var out []string
	total := 0
	for _, s := range steps {
		s = clip(s, maxText)
		if len(out) == 1000 || total+len(s) > maxStepsBytes {
			break
		}
		total += len(s)
		out = append(out, s)
	}
	return out
}
