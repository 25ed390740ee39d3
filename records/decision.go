// Package records keeps a record of every decision (decision.Decision):
// in the evidence store (Recorder: a deny or would-deny is on disk, in the
// store or a journal, before it is answered; other decisions go through a
// bounded queue that never holds up admission), and as Kubernetes Events
// for denials and would-be denials (Notifier).
package records

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policy"
)

// Verdicts as recorded in evidence.Decision.Verdict.
const (
	VerdictAllow     = "allow"
	VerdictWarn      = "warn"
	VerdictDeny      = "deny"
	VerdictWouldDeny = policy.WouldDeny
)

// Verdict is how a verdict is recorded: its outcome, except that a deny
// that was admitted (audit or warn mode) is "would-deny". It is the value
// of the webhook's verdict audit annotation.
func Verdict(v policy.Verdict) string { return v.Word() }

// Rules returns the distinct rule IDs of the findings of v that were not
// ignored, sorted.
func Rules(v policy.Verdict) []string { return v.RuleIDs(policy.ActionWarn) }

// ScopeWorkload marks the element of Decision.Images that holds the
// findings about the workload rather than one image (change control,
// an invalid mode label): it has "scope": "workload" and no "image".
const ScopeWorkload = "workload"

// workloadFindings is that element.
type workloadFindings struct {
	Scope    string           `json:"scope"`
	ChangeID string           `json:"changeID,omitempty"`
	Findings []policy.Finding `json:"findings"`
}

// FromDecision returns the record of d. Its ID is d.ID, so recording the
// same decision twice keeps one record; its time is d.Time. Images is the
// JSON array of the verdict's images (policy.ImageVerdict: image, digest,
// verdict, findings with their evidence, exception), followed, when the
// verdict has findings about the workload or a change ID, by one element
// with "scope": "workload". Text the store could not keep (invalid UTF-8,
// NUL) is replaced with U+FFFD rather than losing the record.
func FromDecision(d decision.Decision) evidence.Decision {
	rec := header(d)
	rec.Images = imagesJSON(d.Verdict)
	return rec
}

// header is the record without its Images, cheap enough to build on the
// admission path.
func header(d decision.Decision) evidence.Decision {
	v := d.Verdict
	rec := evidence.Decision{
		ID:        d.ID,
		Time:      d.Time,
		Operation: d.Operation,
		Namespace: d.Workload.Namespace,
		Kind:      d.Workload.Kind,
		Name:      d.Workload.Name,
		User:      d.User,
		Groups:    d.Groups,
		Mode:      string(v.Mode),
		Verdict:   d.Word(),
		Rules:     Rules(v),
	}
	for _, iv := range v.Images {
		if iv.Exception != nil && !slices.Contains(rec.Exceptions, iv.Exception.Name) {
			rec.Exceptions = append(rec.Exceptions, iv.Exception.Name)
		}
	}
	return rec
}

func imagesJSON(v policy.Verdict) json.RawMessage {
	elems := make([]any, 0, len(v.Images)+1)
	for _, iv := range v.Images {
		elems = append(elems, iv)
	}
	if len(v.Findings) > 0 || v.ChangeID != "" {
		elems = append(elems, workloadFindings{Scope: ScopeWorkload, ChangeID: v.ChangeID, Findings: v.Findings})
	}
	b, err := json.Marshal(elems)
	if err != nil {
		// Evidence values are JSON-able by contract; keep the record
		// without them rather than lose it.
		b, _ = json.Marshal([]map[string]string{{"error": "images not recorded: " + err.Error()}})
	}
	// json.Marshal writes invalid UTF-8 as U+FFFD; a NUL it escapes.
	return bytes.ReplaceAll(b, []byte(`\u0000`), []byte(`\ufffd`))
}

// sanitize makes d's text storable: valid UTF-8 without NUL bytes.
func sanitize(d *evidence.Decision) {
	for _, s := range []*string{&d.ID, &d.Operation, &d.Namespace, &d.Kind, &d.Name, &d.User, &d.Mode, &d.Verdict} {
		*s = clean(*s)
	}
	for _, l := range []*[]string{&d.Groups, &d.Rules, &d.Exceptions} {
		if !slices.ContainsFunc(*l, dirty) {
			continue
		}
		c := make([]string, len(*l))
		for i, s := range *l {
			c[i] = clean(s)
		}
		*l = c
	}
}

func dirty(s string) bool { return clean(s) != s }

func clean(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}
