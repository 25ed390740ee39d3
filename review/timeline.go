package review

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/records"
)

// Event is one step of a decision's evidence chain, as the detail page
// shows it.
type Event struct {
	// Time is when it happened; zero when the evidence has no time (a
	// signature check).
	Time time.Time
	// Kind is created, built, connected, signed, unsigned or the verdict.
	Kind string
	// Image is the image the event is about; empty for the admission.
	Image  string
	Title  string
	Detail []string
	// Bad marks a step a rule objected to.
	Bad bool
}

// Timeline orders what a decision's evidence says happened to its images
// — created, built on a node, connected somewhere during the build,
// signed or not — and ends with the admission. Timed steps come in time
// order; signature steps, which have no time, come just before the
// admission.
func Timeline(d evidence.Decision, images []records.ImageRecord) []Event {
	var timed, untimed []Event
	for _, im := range images {
		if im.Scope == records.ScopeWorkload {
			continue
		}
		timed = append(timed, imageEvents(im)...)
		untimed = append(untimed, signatureEvent(im))
	}
	sort.SliceStable(timed, func(i, j int) bool { return timed[i].Time.Before(timed[j].Time) })
	return append(append(timed, untimed...), admissionEvent(d))
}

// imageEvents are the timed steps of one image's findings.
func imageEvents(im records.ImageRecord) []Event {
	var out []Event
	seenCreated := map[string]bool{}
	seenBuild := map[string]int{} // key → index in out
	addBuild := func(ev map[string]json.RawMessage, bad bool, why string) {
		b := buildOf(ev)
		if b.Node == "" && b.Started == "" && b.Finished == "" {
			return // evidence of a shape this version does not know
		}
		key := b.Node + "\x00" + b.ImageID + "\x00" + b.Started
		if i, ok := seenBuild[key]; ok {
			if bad {
				out[i].Bad = true
				out[i].Detail = append(out[i].Detail, why)
			}
			return
		}
		t := parseTime(b.Started)
		if t.IsZero() {
			t = parseTime(b.Finished)
		}
		title := "Built on node " + orUnknown(b.Node)
		if b.Tool != "" {
			title += " with " + b.Tool
		}
		e := Event{Time: t, Kind: "built", Image: im.Image, Title: title, Bad: bad}
		if ft := parseTime(b.Finished); !ft.IsZero() {
			e.Detail = append(e.Detail, "finished "+showTime(ft))
		}
		if b.ImageID != "" {
			e.Detail = append(e.Detail, fmt.Sprintf("config %s, matched by %s", b.ImageID, orUnknown(b.MatchedBy)))
		}
		if b.Source != "" {
			e.Detail = append(e.Detail, "reported by "+b.Source)
		}
		if bad {
			e.Detail = append(e.Detail, why)
		}
		seenBuild[key] = len(out)
		out = append(out, e)
	}
	for _, f := range im.Findings {
		switch policy.RuleID(f.Rule) {
		case policy.RuleFreshImage:
			created := str(f.Evidence["created"])
			if created == "" || seenCreated[created] {
				continue
			}
			seenCreated[created] = true
			e := Event{Time: parseTime(created), Kind: "created", Image: im.Image, Title: "Image created", Bad: true}
			if cd := str(f.Evidence["configDigest"]); cd != "" {
				e.Detail = append(e.Detail, "config "+cd)
			}
			if pl := str(f.Evidence["platform"]); pl != "" {
				e.Detail = append(e.Detail, "platform "+pl)
			}
			switch src := str(f.Evidence["timeSource"]); src {
			case "", policy.TimeSourceConfig:
				e.Detail = append(e.Detail, "time from the image config, which the build writes itself")
			case policy.TimeSourceTransparencyLog:
				e.Detail = append(e.Detail, "time from the transparency log entry of a verified signature")
			case policy.TimeSourceTimestampAuthority:
				e.Detail = append(e.Detail, "time from the RFC 3161 timestamp of a verified signature")
			case policy.TimeSourceNodeReport:
				e.Detail = append(e.Detail, "time from a node's report of building it")
			default:
				e.Detail = append(e.Detail, "time from the "+src)
			}
			e.Detail = append(e.Detail, "["+f.Rule+"] "+f.Message)
			out = append(out, e)
		case policy.RuleHostBuilt:
			addBuild(f.Evidence, true, "["+f.Rule+"] "+f.Message)
		case policy.RuleUntrustedEgress:
			var ev map[string]json.RawMessage
			_ = json.Unmarshal(f.Evidence["build"], &ev)
			addBuild(ev, false, "")
			var conns []map[string]json.RawMessage
			_ = json.Unmarshal(f.Evidence["connections"], &conns)
			for _, c := range conns {
				dest := str(c["destIP"]) + ":" + str(c["destPort"])
				if n := str(c["destName"]); n != "" {
					dest = n + " (" + dest + ")"
				}
				title := fmt.Sprintf("%s (pid %s) on %s connected to %s", orUnknown(str(c["process"])), str(c["pid"]), orUnknown(str(c["node"])), dest)
				e := Event{Time: parseTime(str(c["time"])), Kind: "connected", Image: im.Image, Title: title, Bad: true}
				if cl := str(c["cmdline"]); cl != "" {
					e.Detail = append(e.Detail, "command: "+cl)
				}
				if by := str(c["attributedBy"]); by != "" {
					e.Detail = append(e.Detail, "tied to the build by "+by)
				}
				e.Detail = append(e.Detail, "["+f.Rule+"] the destination is not trusted")
				out = append(out, e)
			}
		}
	}
	return out
}

// signatureRules are the findings that say an image is not signed (or
// attested) the way the policy wants.
var signatureRules = []policy.RuleID{
	policy.RuleUnsigned, policy.RuleUntrustedSigner, policy.RuleMissingProvenance,
	policy.RuleUnapprovedBuilder, policy.RuleUnapprovedSource,
}

func signatureEvent(im records.ImageRecord) Event {
	e := Event{Kind: "signed", Image: im.Image, Title: "No signature or provenance finding",
		Detail: []string{"signed as the policy requires, or the policy does not check signatures"}}
	for _, f := range im.Findings {
		if !slices.Contains(signatureRules, policy.RuleID(f.Rule)) {
			continue
		}
		if !e.Bad {
			e = Event{Kind: "unsigned", Image: im.Image, Title: "Not signed or attested as required", Bad: true}
		}
		e.Detail = append(e.Detail, "["+f.Rule+"] "+f.Message)
	}
	return e
}

func admissionEvent(d evidence.Decision) Event {
	e := Event{Time: d.Time, Kind: d.Verdict}
	what := strings.ToLower(d.Operation)
	if what == "" {
		what = "request"
	}
	switch d.Verdict {
	case records.VerdictDeny:
		e.Title, e.Bad = "Denied", true
	case records.VerdictWouldDeny:
		e.Title, e.Bad = fmt.Sprintf("Admitted; would be denied (%s mode)", d.Mode), true
	case records.VerdictWarn:
		e.Title = "Admitted with warnings"
	default:
		e.Title = "Admitted"
	}
	e.Detail = append(e.Detail, fmt.Sprintf("%s of %s %s/%s by %s (%s mode)", what, d.Kind, d.Namespace, orUnknown(d.Name), orUnknown(d.User), d.Mode))
	if len(d.Rules) > 0 {
		e.Detail = append(e.Detail, "rules: "+strings.Join(d.Rules, ", "))
	}
	if len(d.Exceptions) > 0 {
		e.Detail = append(e.Detail, "exceptions used: "+strings.Join(d.Exceptions, ", "))
	}
	return e
}

type buildEv struct {
	Node, Tool, ImageID, MatchedBy, Source, Started, Finished string
}

func buildOf(ev map[string]json.RawMessage) buildEv {
	return buildEv{
		Node: str(ev["node"]), Tool: str(ev["tool"]), ImageID: str(ev["imageID"]), MatchedBy: str(ev["matchedBy"]),
		Source: str(ev["source"]), Started: str(ev["started"]), Finished: str(ev["finished"]),
	}
}

// str shows an evidence value; "" for none.
func str(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	return records.EvidenceString(raw)
}

// parseTime reads an RFC 3339 evidence time; zero for none, and for the
// zero time the policy writes when a build had no finish time.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil || t.Year() <= 1 {
		return time.Time{}
	}
	return t
}

func showTime(t time.Time) string {
	if t.IsZero() {
		return "at an unknown time"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}

func orUnknown(s string) string {
	if s == "" {
		return "(unknown)"
	}
	return s
}
