package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	"buildguard.dev/buildguard/internal/shorten"
)

// Rule IDs of node evidence.
const (
	// RuleHostBuilt: a node that is not an approved build node reported
	// building the image.
	RuleHostBuilt RuleID = "host-built"
	// RuleUntrustedEgress: the image's build talked to a destination
	// outside nodeEvidence.trustedDestinations.
	RuleUntrustedEgress RuleID = "untrusted-egress"
	// RuleImplausibleBuildTime: a node reported a build of the image at a
	// time that cannot be its build's (buildTimeProblem). The build is
	// not used; what it would have found is this finding instead. Its
	// action is always warn: a broken clock or a forged report must not
	// deny by itself. Not configurable under rules.
	RuleImplausibleBuildTime RuleID = "implausible-build-time"
)

// DefaultBuildWindow is nodeEvidence.buildWindow when the policy leaves it
// out.
const DefaultBuildWindow = 5 * time.Minute

// NodeEvidence configures what node reports mean.
type NodeEvidence struct {
	// ApprovedBuildNodes are globs over node names allowed to build images
	// ("ci-runner-*"). A build on any other node is host-built.
	ApprovedBuildNodes []string `json:"approvedBuildNodes,omitempty" yaml:"approvedBuildNodes,omitempty"`
	// TrustedDestinations are hosts, host globs and CIDRs a build may
	// connect to, as trustedSources.
	TrustedDestinations []string `json:"trustedDestinations,omitempty" yaml:"trustedDestinations,omitempty"`
	// BuildWindow is how far around a build its node's connections count
	// when they cannot be tied to the build's processes or containers.
	// The default is 5m.
	BuildWindow Duration `json:"buildWindow,omitempty" yaml:"buildWindow,omitempty"`
}

// BuildEvidence is a build of a container's image reported by a node,
// with the node's connections around it.
type BuildEvidence struct {
	Source string // sensor or format that reported it
	// Reporter is the user (a service account) that posted it: the node's
	// agent, or a forwarder speaking for the node. Empty when unknown.
	Reporter string
	Node     string
	Tool     string
	ImageID  string // config digest
	Tags     []string
	Started  time.Time
	Finished time.Time
	// MatchedBy says how the build was tied to the image: "image-id" (the
	// config digest, exact) or "tag" (weaker: a tag can be reused).
	MatchedBy string
	// Platform is the index child whose config the build made, if any.
	Platform string
	// PIDs and ContainerIDs are the build's process tree and step
	// containers, when known; connections from them are the build's.
	PIDs         []int
	ContainerIDs []string
	Connections  []ConnectionEvidence
}

// ConnectionEvidence is an outbound connection a node reported.
type ConnectionEvidence struct {
	Source      string
	Reporter    string // as BuildEvidence.Reporter
	Node        string
	Time        time.Time
	Process     string
	PID         int
	Cmdline     string
	ContainerID string
	DestIP      netip.Addr
	DestPort    int
	DestName    string
}

type nodeEvidence struct {
	approved []glob
	trusted  Sources
	window   time.Duration
}

func compileNodeEvidence(ne *NodeEvidence) (*nodeEvidence, error) {
	if ne == nil {
		return nil, nil
	}
	c := &nodeEvidence{window: ne.BuildWindow.Duration}
	var err error
	for i, n := range ne.ApprovedBuildNodes {
		g, gerr := compileGlob(n)
		if gerr != nil {
			return nil, &FieldError{Field: fmt.Sprintf("nodeEvidence.approvedBuildNodes[%d]", i), Msg: gerr.Error()}
		}
		c.approved = append(c.approved, g)
	}
	if c.trusted, err = ParseSources(ne.TrustedDestinations); err != nil {
		return nil, &FieldError{Field: "nodeEvidence.trustedDestinations", Msg: err.Error()}
	}
	if c.window < 0 {
		return nil, &FieldError{Field: "nodeEvidence.buildWindow", Msg: "must not be negative"}
	}
	if c.window == 0 {
		c.window = DefaultBuildWindow
	}
	return c, nil
}

// BuildWindow returns how far around a build connections count; zero
// when the policy does not use node evidence.
func (p *Policy) BuildWindow() time.Duration {
	if p.evidence == nil {
		return 0
	}
	return p.evidence.window
}

// attributed reports whether c belongs to build b: from its process tree
// or a step container when those are known, otherwise from its node
// within the window around it.
func (ne *nodeEvidence) attributed(b BuildEvidence, c ConnectionEvidence) (bool, string) {
	if c.Node != b.Node {
		return false, ""
	}
	start, end := b.Started, b.Finished
	if end.IsZero() {
		end = start
	}
	if c.Time.Before(start.Add(-ne.window)) || c.Time.After(end.Add(ne.window)) {
		return false, ""
	}
	if len(b.PIDs) == 0 && len(b.ContainerIDs) == 0 {
		return true, "node and time"
	}
	for _, id := range b.ContainerIDs {
		if sameContainer(id, c.ContainerID) {
			return true, "container"
		}
	}
	// A PID is reused once its process ends: it names the build's process
	// only during the build, and not in a container other than the build's.
	if c.ContainerID != "" && len(b.ContainerIDs) > 0 {
		return false, ""
	}
	if !b.Started.IsZero() && !b.Finished.IsZero() &&
		(c.Time.Before(b.Started.Add(-pidSlack)) || c.Time.After(b.Finished.Add(pidSlack))) {
		return false, ""
	}
	for _, pid := range b.PIDs {
		if pid != 0 && pid == c.PID {
			return true, "process"
		}
	}
	return false, ""
}

// pidSlack is how far outside a build's span a connection may be and
// still be tied to the build by its PID: sensors' clocks and the build's
// start and end as the engine reports them differ by a few seconds.
const pidSlack = 5 * time.Second

// minContainerID is the shortest container ID prefix that names a
// container: Docker's short IDs are 12 hex digits.
const minContainerID = 12

// sameContainer reports whether two container IDs, either possibly
// shortened, name one container.
func sameContainer(a, b string) bool {
	if len(a) < minContainerID || len(b) < minContainerID {
		return false
	}
	return strings.HasPrefix(a, b) || strings.HasPrefix(b, a)
}

// nodeFindings judges the builds nodes reported for one image, resolved
// as img, at now, the time of the admission. A build whose time cannot be
// that of this image's build (buildTimeProblem) is not evidence of
// anything: what it would have found becomes one implausible-build-time
// finding, a warning, so that a broken clock or a forged report is
// recorded but never denies by itself.
func (p *Policy) nodeFindings(builds []BuildEvidence, img *Image, now time.Time) []Finding {
	ne := p.evidence
	if ne == nil || len(builds) == 0 {
		return nil
	}
	var out []Finding
	for _, b := range builds {
		buildEv := map[string]any{
			"node": b.Node, "tool": b.Tool, "imageID": b.ImageID, "matchedBy": b.MatchedBy, "source": b.Source,
			"started": b.Started.UTC().Format(time.RFC3339), "finished": b.Finished.UTC().Format(time.RFC3339),
		}
		if len(b.Tags) > 0 {
			buildEv["tags"] = b.Tags
		}
		if b.Platform != "" {
			buildEv["platform"] = b.Platform
		}
		if b.Reporter != "" {
			buildEv["reporter"] = b.Reporter
		}
		fs := p.buildFindings(b, buildEv)
		var would []string
		for _, f := range fs {
			if f.Action != ActionIgnore {
				would = append(would, string(f.Rule))
			}
		}
		if len(would) == 0 {
			out = append(out, fs...) // ignored findings, kept as they were
			continue
		}
		if problem := p.buildTimeProblem(b, img, now); problem != nil {
			ev := map[string]any{"build": buildEv, "reason": problem.reason, "wouldFind": would, "admission": now.UTC().Format(time.RFC3339)}
			for k, v := range problem.ev {
				ev[k] = v
			}
			out = append(out, p.finding(RuleImplausibleBuildTime, SeverityMedium,
				fmt.Sprintf("node %s reported building this image with %s %s, %s: a broken clock or a forged report; not taken as evidence (it would find %s)",
					b.Node, b.Tool, buildSpanShort(b), problem.msg, strings.Join(would, ", ")), ev))
			continue
		}
		out = append(out, fs...)
	}
	return out
}

// buildFindings are the host-built and untrusted-egress findings of one
// build; buildEv is its evidence.
func (p *Policy) buildFindings(b BuildEvidence, buildEv map[string]any) []Finding {
	ne := p.evidence
	var out []Finding
	if _, ok := matchAny(ne.approved, b.Node); !ok {
		sev := SeverityHigh
		if b.MatchedBy == "tag" {
			sev = SeverityMedium
		}
		out = append(out, p.finding(RuleHostBuilt, sev,
			fmt.Sprintf("node %s built this image with %s at %s (matched by %s), and %s is not an approved build node",
				b.Node, b.Tool, b.Finished.UTC().Format(time.RFC3339), b.MatchedBy, b.Node), buildEv))
	}
	var bad []map[string]any
	var first ConnectionEvidence
	conns := append([]ConnectionEvidence(nil), b.Connections...)
	sort.Slice(conns, func(i, j int) bool { return conns[i].Time.Before(conns[j].Time) })
	for _, c := range conns {
		ok, how := ne.attributed(b, c)
		if !ok || p.trustedDestination(c) {
			continue
		}
		if len(bad) == 0 {
			first = c
		}
		ce := map[string]any{
			"time": c.Time.UTC().Format(time.RFC3339), "node": c.Node, "destIP": c.DestIP.String(), "destPort": c.DestPort,
			"process": c.Process, "pid": c.PID, "attributedBy": how, "source": c.Source,
		}
		if c.DestName != "" {
			ce["destName"] = c.DestName
		}
		if c.Reporter != "" {
			ce["reporter"] = c.Reporter
		}
		if c.Cmdline != "" {
			ce["cmdline"] = shorten.Text(c.Cmdline, maxQuotedStep)
		}
		if c.ContainerID != "" {
			ce["containerID"] = c.ContainerID
		}
		bad = append(bad, ce)
		if len(bad) == 20 {
			break // enough to act on; the store has the rest
		}
	}
	if len(bad) == 0 {
		return out
	}
	ev := map[string]any{"build": buildEv, "connections": bad}
	dest := first.DestIP.String()
	if first.DestName != "" {
		dest = first.DestName + " (" + dest + ")"
	}
	msg := fmt.Sprintf("while node %s built this image, %s (pid %d) connected to untrusted %s:%d at %s",
		b.Node, first.Process, first.PID, dest, first.DestPort, first.Time.UTC().Format(time.RFC3339))
	if len(bad) > 1 {
		msg += fmt.Sprintf(", and %d more connection(s)", len(bad)-1)
	}
	msg += " " + buildSpan(b)
	return append(out, p.finding(RuleUntrustedEgress, SeverityHigh, msg, ev))
}

// MaxBuildBeforeCreated is how long before its image's config was created
// a build may have finished and still be taken as the build that made
// it. The config's created time is written during the build, by the same
// node's clock the build report comes from; a build that ended a day
// before is another build, a forged report or a clock gone wrong. It is
// generous on purpose: whoever builds on a node writes created himself,
// and a time far in the future beyond it would make his build a mere
// warning, so he would have to wait this long to deploy it.
const MaxBuildBeforeCreated = 24 * time.Hour

type buildTimeProblem struct {
	reason string // "after-admission" or "before-image-created"
	msg    string
	ev     map[string]any
}

// buildTimeProblem says why build b cannot be the build of img admitted
// at now, or nil when its times are plausible:
//   - it is dated (started or finished) more than freshness.maxClockSkew
//     after the admission: the image existed before it;
//   - it finished more than MaxBuildBeforeCreated before the image's
//     config was created (of the platform it matched; of every platform
//     when it matched none in particular). An epoch-zero or missing
//     created time says nothing.
//
// A build long after the image was created is plausible: a fully cached
// rebuild, or a reproducible build (SOURCE_DATE_EPOCH) writes an old
// created time.
func (p *Policy) buildTimeProblem(b BuildEvidence, img *Image, now time.Time) *buildTimeProblem {
	last := b.Finished
	if b.Started.After(last) {
		last = b.Started
	}
	if last.IsZero() {
		return nil
	}
	if ahead := last.Sub(now); ahead > p.maxClockSkew {
		return &buildTimeProblem{reason: "after-admission",
			msg: fmt.Sprintf("%s after this admission (more than freshness.maxClockSkew %s)", human(ahead.Round(time.Second)), human(p.maxClockSkew)),
			ev:  map[string]any{"maxClockSkew": human(p.maxClockSkew)}}
	}
	if img == nil {
		return nil
	}
	var created time.Time
	for _, pl := range img.Platforms {
		if b.Platform != "" && pl.Platform != b.Platform {
			continue
		}
		if pl.Created.Unix() <= 0 {
			continue
		}
		if created.IsZero() || pl.Created.Before(created) {
			created = pl.Created
		}
	}
	if created.IsZero() {
		return nil
	}
	if before := created.Sub(last); before > MaxBuildBeforeCreated {
		return &buildTimeProblem{reason: "before-image-created",
			msg: fmt.Sprintf("%s before the image's config was created (%s)", human(before.Round(time.Second)), created.UTC().Format(time.RFC3339)),
			ev:  map[string]any{"imageCreated": created.UTC().Format(time.RFC3339)}}
	}
	return nil
}

// buildSpanShort is a build's span for a sentence: "at T" or "from T1 to T2".
func buildSpanShort(b BuildEvidence) string {
	if b.Started.IsZero() || b.Finished.IsZero() || b.Started.Equal(b.Finished) {
		t := b.Finished
		if t.IsZero() {
			t = b.Started
		}
		return "at " + t.UTC().Format(time.RFC3339)
	}
	return "from " + b.Started.UTC().Format(time.RFC3339) + " to " + b.Finished.UTC().Format(time.RFC3339)
}

// ConnectionWindow is a node and a span of time in which the node's
// connections count as a build's: the build's span widened by
// nodeEvidence.buildWindow on both sides.
type ConnectionWindow struct {
	Node     string
	From, To time.Time
}

// Contains reports whether a connection of node at t falls in w.
func (w ConnectionWindow) Contains(node string, t time.Time) bool {
	return node == w.Node && !t.Before(w.From) && !t.After(w.To)
}

// connectionWindows are the windows of the builds of img that are taken
// as evidence (not those of an implausible time).
func (p *Policy) connectionWindows(builds []BuildEvidence, img *Image, now time.Time) []ConnectionWindow {
	if p.evidence == nil {
		return nil
	}
	var out []ConnectionWindow
	for _, b := range builds {
		if b.Node == "" || p.buildTimeProblem(b, img, now) != nil {
			continue
		}
		end := b.Finished
		if end.IsZero() || end.Before(b.Started) {
			end = b.Started
		}
		out = append(out, ConnectionWindow{Node: b.Node, From: b.Started.Add(-p.evidence.window), To: end.Add(p.evidence.window)})
	}
	return out
}

// buildSpan says when a build ran, for a reader who must find it in the
// node's logs: "(docker build, 10:00:05Z–10:00:31Z)".
func buildSpan(b BuildEvidence) string {
	tool := b.Tool
	if tool == "" {
		tool = "image"
	}
	switch {
	case b.Started.IsZero() && b.Finished.IsZero():
		return "(" + tool + " build)"
	case b.Started.IsZero() || b.Started.Equal(b.Finished):
		return fmt.Sprintf("(%s build, finished %s)", tool, b.Finished.UTC().Format(time.RFC3339))
	case b.Finished.IsZero():
		return fmt.Sprintf("(%s build, started %s)", tool, b.Started.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("(%s build, %s to %s)", tool, b.Started.UTC().Format(time.RFC3339), b.Finished.UTC().Format(time.RFC3339))
}

func (p *Policy) trustedDestination(c ConnectionEvidence) bool {
	t := p.evidence.trusted
	if c.DestIP.IsValid() && t.Trusted(c.DestIP.String()) {
		return true
	}
	return c.DestName != "" && t.Trusted(c.DestName)
}
