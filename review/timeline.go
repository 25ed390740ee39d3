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

// Tones of timeline events: what an event's colour means. Each has one
// colour, explained by the legend under the timeline.
const (
	// ToneBad: a rule objects with a deny action.
	ToneBad = "bad"
	// ToneWarn: a rule objects with a warn action, or an objection was
	// not enforced (a would-deny, an exception).
	ToneWarn = "warn"
	// ToneOK: checked, and nothing found.
	ToneOK = "ok"
	// ToneInfo: a fact no rule judged, or something this policy does not
	// check.
	ToneInfo = "info"
)

// toneRank orders tones from the most serious.
func toneRank(t string) int {
	switch t {
	case ToneBad:
		return 3
	case ToneWarn:
		return 2
	case ToneOK:
		return 1
	}
	return 0
}

// worse returns the more serious of two tones.
func worse(a, b string) string {
	if toneRank(b) > toneRank(a) {
		return b
	}
	return a
}

// Event is one step of a decision's evidence chain, as the detail page
// shows it.
type Event struct {
	// Time is when it happened; zero when the evidence has no time (a
	// signature check).
	Time time.Time
	// Kind is created, built, connected, signatures, provenance or the
	// verdict.
	Kind string
	// Image is the image the event is about, and Digest its digest;
	// empty for the admission.
	Image, Digest string
	Title         string
	Detail        []string
	// Tone is what the event's colour says: ToneBad, ToneWarn, ToneOK or
	// ToneInfo.
	Tone string
}

// Timeline orders what a decision's evidence says happened to its images
// — created, built on a node, connected somewhere during the build,
// signed or not, with provenance or not — and ends with the admission.
// Timed steps come in time order; signature and provenance steps, which
// have no time, come just before the admission.
func Timeline(d evidence.Decision, images []records.ImageRecord) []Event {
	var timed, untimed []Event
	for _, im := range images {
		if im.Scope == records.ScopeWorkload {
			continue
		}
		timed = append(timed, imageEvents(im)...)
		untimed = append(untimed, checkEvents(im)...)
	}
	sort.SliceStable(timed, func(i, j int) bool { return timed[i].Time.Before(timed[j].Time) })
	return append(append(timed, untimed...), admissionEvent(d, images))
}

// findingTone is the tone of a finding's objection.
func findingTone(f records.FindingRecord) string {
	switch policy.Action(f.Action) {
	case policy.ActionDeny:
		return ToneBad
	case policy.ActionIgnore:
		return ToneInfo
	}
	// warn, and records that do not say.
	if f.Action == "" {
		return ToneBad
	}
	return ToneWarn
}

// imageEvents are the timed steps of one image's findings.
func imageEvents(im records.ImageRecord) []Event {
	var out []Event
	seenCreated := map[string]int{} // created time → index in out
	seenBuild := map[string]int{}   // key → index in out
	addBuild := func(ev map[string]json.RawMessage, tone, why string) {
		b := buildOf(ev)
		if b.Node == "" && b.Started == "" && b.Finished == "" {
			return // evidence of a shape this version does not know
		}
		key := b.Node + "\x00" + b.ImageID + "\x00" + b.Started
		if i, ok := seenBuild[key]; ok {
			if why != "" {
				out[i].Tone = worse(out[i].Tone, tone)
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
		e := Event{Time: t, Kind: "built", Image: im.Image, Digest: im.Digest, Title: title, Tone: tone}
		if ft := parseTime(b.Finished); !ft.IsZero() {
			e.Detail = append(e.Detail, "finished "+showTime(ft))
		}
		if b.ImageID != "" {
			e.Detail = append(e.Detail, fmt.Sprintf("config %s, matched by %s", b.ImageID, orUnknown(b.MatchedBy)))
		}
		if b.Source != "" {
			e.Detail = append(e.Detail, "reported by "+b.Source)
		}
		if why != "" {
			e.Detail = append(e.Detail, why)
		}
		seenBuild[key] = len(out)
		out = append(out, e)
	}
	// created adds the image's created time, once per time.
	created := func(f records.FindingRecord, title string, detail ...string) {
		at := str(f.Evidence["created"])
		if at == "" {
			return
		}
		why := "[" + f.Rule + "] " + f.Message
		if i, ok := seenCreated[at]; ok {
			out[i].Tone = worse(out[i].Tone, findingTone(f))
			out[i].Detail = append(out[i].Detail, why)
			return
		}
		e := Event{Time: parseTime(at), Kind: "created", Image: im.Image, Digest: im.Digest, Title: title, Tone: findingTone(f)}
		if cd := str(f.Evidence["configDigest"]); cd != "" {
			e.Detail = append(e.Detail, "config "+cd)
		}
		if pl := str(f.Evidence["platform"]); pl != "" {
			e.Detail = append(e.Detail, "platform "+pl)
		}
		e.Detail = append(append(e.Detail, detail...), why)
		seenCreated[at] = len(out)
		out = append(out, e)
	}
	for _, f := range im.Findings {
		switch policy.RuleID(f.Rule) {
		case policy.RuleFreshImage:
			created(f, "Image created", timeSource(str(f.Evidence["timeSource"])))
		case policy.RuleInconsistentCreatedTime:
			created(f, "Image claims to be created")
		case policy.RuleHostBuilt:
			addBuild(f.Evidence, findingTone(f), "["+f.Rule+"] "+f.Message)
		case policy.RuleImplausibleBuildTime:
			var ev map[string]json.RawMessage
			_ = json.Unmarshal(f.Evidence["build"], &ev)
			addBuild(ev, findingTone(f), "["+f.Rule+"] "+f.Message)
		case policy.RuleUntrustedEgress:
			var ev map[string]json.RawMessage
			_ = json.Unmarshal(f.Evidence["build"], &ev)
			addBuild(ev, ToneInfo, "")
			var conns []map[string]json.RawMessage
			_ = json.Unmarshal(f.Evidence["connections"], &conns)
			for _, c := range conns {
				dest := str(c["destIP"]) + ":" + str(c["destPort"])
				if n := str(c["destName"]); n != "" {
					dest = n + " (" + dest + ")"
				}
				title := fmt.Sprintf("%s (pid %s) on %s connected to %s", orUnknown(str(c["process"])), str(c["pid"]), orUnknown(str(c["node"])), dest)
				e := Event{Time: parseTime(str(c["time"])), Kind: "connected", Image: im.Image, Digest: im.Digest, Title: title, Tone: findingTone(f)}
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

// timeSource says where a fresh-image finding's time came from.
func timeSource(src string) string {
	switch src {
	case "", policy.TimeSourceConfig:
		return "time from the image config, which the build writes itself"
	case policy.TimeSourceAttestation:
		return "time from the build finish of verified SLSA provenance"
	case policy.TimeSourceTransparencyLog:
		return "time from the transparency log entry of a verified signature"
	case policy.TimeSourceTimestampAuthority:
		return "time from the RFC 3161 timestamp of a verified signature"
	case policy.TimeSourceNodeReport:
		return "time from a node's report of building it"
	}
	return "time from the " + src
}

// The findings of the signature and provenance checks.
var (
	signatureRules  = []policy.RuleID{policy.RuleUnsigned, policy.RuleUntrustedSigner}
	provenanceRules = []policy.RuleID{policy.RuleMissingProvenance, policy.RuleUnapprovedBuilder, policy.RuleUnapprovedSource,
		policy.RuleVSAFailed, policy.RuleVSAStale}
)

// checkEvents say how an image's signatures and provenance were judged:
// what the rules found, that the policy checked and found nothing, or
// that it does not check them. A record from before checks were recorded
// (Checks nil) says only what was found.
func checkEvents(im records.ImageRecord) []Event {
	var out []Event
	for _, c := range []struct {
		kind, check, what, bad, ok, notChecked string
		rules                                  []policy.RuleID
	}{
		{"signatures", policy.CheckSignatures, "Signatures", "Not signed as required", "Signed as required",
			"Signatures not checked by this policy", signatureRules},
		{"provenance", policy.CheckProvenance, "Provenance", "Provenance not as required", "Provenance as required",
			"Provenance not checked by this policy", provenanceRules},
	} {
		e := Event{Kind: c.kind, Image: im.Image, Digest: im.Digest}
		for _, f := range im.Findings {
			if slices.Contains(c.rules, policy.RuleID(f.Rule)) {
				e.Tone = worse(e.Tone, findingTone(f))
				e.Detail = append(e.Detail, "["+f.Rule+"] "+f.Message)
			}
		}
		switch {
		case len(e.Detail) > 0:
			e.Title = c.bad
		case im.Checks == nil:
			// Recorded before checks were: all that is known is that
			// nothing was found.
			e.Title, e.Tone = "No "+strings.ToLower(c.what)+" finding", ToneInfo
			e.Detail = []string{"this record does not say whether the policy checked " + c.kind}
		case slices.Contains(im.Checks, c.check):
			e.Title, e.Tone = c.ok, ToneOK
			if c.check == policy.CheckSignatures {
				e.Detail = []string{"a signature verified with a trusted key or identity"}
			} else {
				e.Detail = []string{"verified provenance from an approved builder and source, or a passing VSA"}
			}
		case im.Digest == "":
			e.Title, e.Tone = c.what+" not checked: the image was not resolved", ToneInfo
		default:
			e.Title, e.Tone = c.notChecked, ToneInfo
		}
		out = append(out, e)
	}
	return out
}

func admissionEvent(d evidence.Decision, images []records.ImageRecord) Event {
	e := Event{Time: d.Time, Kind: d.Verdict}
	what := strings.ToLower(d.Operation)
	if what == "" {
		what = "request"
	}
	switch d.Verdict {
	case records.VerdictDeny:
		e.Title, e.Tone = "Denied", ToneBad
	case records.VerdictWouldDeny:
		e.Title, e.Tone = fmt.Sprintf("Admitted; would be denied (%s mode)", d.Mode), ToneWarn
	case records.VerdictWarn:
		e.Title, e.Tone = "Admitted with warnings", ToneWarn
	default:
		e.Title, e.Tone = "Admitted", ToneOK
		for _, im := range images {
			if im.Exception != nil {
				e.Title, e.Tone = "Admitted by exception", ToneWarn
			}
		}
	}
	if d.Operation == "SCAN" {
		e.Title = "Judged by an audit scan: " + strings.ToLower(e.Title[:1]) + e.Title[1:]
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
