package policy

import "slices"

// Combine merges the verdicts several policies reached on the same facts:
// the strictest wins. The workload is denied when any verdict denies it;
// each image's outcome is the most severe any policy gave it; every
// finding is kept once (the same rule and message from two policies is
// one finding, with the stricter action). The mode is that of the
// deciding verdict: a denying one, else the one with the most severe
// outcome, else the strictest mode. Combine of one verdict is that
// verdict; of none, an empty allow.
func Combine(vs []Verdict) Verdict {
	switch len(vs) {
	case 0:
		return Verdict{Outcome: OutcomeAllow, Allowed: true}
	case 1:
		return vs[0]
	}
	decider := vs[0]
	for _, v := range vs[1:] {
		if stricter(v, decider) {
			decider = v
		}
	}
	out := Verdict{Mode: decider.Mode, Outcome: decider.Outcome, Allowed: true}
	for _, v := range vs {
		out.Allowed = out.Allowed && v.Allowed
		out.Findings = mergeFindings(out.Findings, v.Findings)
		if out.ChangeID == "" {
			out.ChangeID = v.ChangeID
		}
		out.Pin = out.Pin || v.Pin
	}
	out.Images = make([]ImageVerdict, len(decider.Images))
	for i := range decider.Images {
		iv := vs[0].Images[i]
		iv.Findings = append([]Finding{}, iv.Findings...)
		iv.Watch = slices.Clone(iv.Watch)
		for _, v := range vs[1:] {
			other := v.Images[i]
			if other.Outcome.rank() > iv.Outcome.rank() {
				iv.Outcome = other.Outcome
			}
			if iv.Digest == "" {
				iv.Digest = other.Digest
			}
			if iv.Exception == nil {
				iv.Exception = other.Exception
			}
			iv.Findings = mergeFindings(iv.Findings, other.Findings)
			for _, w := range other.Watch {
				if !slices.Contains(iv.Watch, w) {
					iv.Watch = append(iv.Watch, w)
				}
			}
		}
		out.Images[i] = iv
	}
	return out
}

func modeRank(m Mode) int {
	switch m {
	case ModeEnforce:
		return 2
	case ModeWarn:
		return 1
	}
	return 0
}

// stricter reports whether a decides over b.
func stricter(a, b Verdict) bool {
	if a.Allowed != b.Allowed {
		return !a.Allowed
	}
	if a.Outcome.rank() != b.Outcome.rank() {
		return a.Outcome.rank() > b.Outcome.rank()
	}
	return modeRank(a.Mode) > modeRank(b.Mode)
}

func mergeFindings(into, from []Finding) []Finding {
	for _, f := range from {
		merged := false
		for i, g := range into {
			if g.Rule == f.Rule && g.Message == f.Message {
				if f.Action.rank() > g.Action.rank() {
					into[i] = f
				}
				merged = true
				break
			}
		}
		if !merged {
			into = append(into, f)
		}
	}
	return into
}

// WouldDeny is the verdict word of a deny that was admitted, in audit or
// warn mode.
const WouldDeny = "would-deny"

// Word is the verdict as audit annotations, metrics, records and pod
// annotations name it: allow, warn, deny, or would-deny for a deny that
// was admitted.
func (v Verdict) Word() string {
	if v.Outcome == OutcomeDeny && v.Allowed {
		return WouldDeny
	}
	return string(v.Outcome)
}

// RuleIDs returns the distinct rule IDs, sorted, of the findings — of the
// images and of the workload — whose action is at least min: ActionWarn
// for every finding not ignored, ActionDeny for the denying ones.
func (v Verdict) RuleIDs(min Action) []string {
	var out []string
	add := func(f Finding) {
		if f.Action.rank() >= min.rank() && f.Action != ActionIgnore && !slices.Contains(out, string(f.Rule)) {
			out = append(out, string(f.Rule))
		}
	}
	for _, iv := range v.Images {
		for _, f := range iv.Findings {
			add(f)
		}
	}
	for _, f := range v.Findings {
		add(f)
	}
	slices.Sort(out)
	return out
}
