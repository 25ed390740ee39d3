package policy

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// Rule IDs of node evidence.
const (
	// RuleHostBuilt: a node that is not an approved build node reported
	// building the image.
	RuleHostBuilt RuleID = "host-built"
	// RuleUntrustedEgress: the image's build talked to a destination
	// outside nodeEvidence.trustedDestinations.
	RuleUntrustedEgress RuleID = "untrusted-egress"
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

// nodeFindings judges the builds nodes reported for one image.
func (p *Policy) nodeFindings(builds []BuildEvidence) []Finding {
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
				ce["cmdline"] = shorten(c.Cmdline, maxQuotedStep)
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
			continue
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
		out = append(out, p.finding(RuleUntrustedEgress, SeverityHigh, msg, ev))
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
