// Package records keeps a record of every admission decision: in the
// evidence store (Recorder: a deny or would-deny is on disk, in the store
// or a journal, before it is answered; other decisions go through a
// bounded queue that never holds up admission), and as Kubernetes Events
// for denials and would-be denials (Notifier).
package records

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"buildguard.dev/buildguard/engine"
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

// Decision turns an admission decision into its record, at time t. The ID
// is the request's UID, so recording the same request twice keeps one
// record. Images is the JSON array of v.Images (policy.ImageVerdict: image,
// digest, verdict, findings with their evidence, exception), followed,
// when v has findings about the workload or a change ID, by one element
// with "scope": "workload". Text the store could not keep (invalid UTF-8,
// NUL) is replaced with U+FFFD rather than losing the record.
func Decision(req *admissionv1.AdmissionRequest, w engine.Workload, v policy.Verdict, t time.Time) evidence.Decision {
	d := header(req, w, v, t)
	d.Images = imagesJSON(v)
	return d
}

// header is the decision without its Images, cheap enough to build on the
// admission path.
func header(req *admissionv1.AdmissionRequest, w engine.Workload, v policy.Verdict, t time.Time) evidence.Decision {
	kind := w.Kind
	if kind == "" {
		kind = req.Kind.Kind
	}
	name := w.Name
	if name == "" {
		name = req.Name
	}
	ns := w.Namespace
	if ns == "" {
		ns = req.Namespace
	}
	d := evidence.Decision{
		ID:        string(req.UID),
		Time:      t,
		Operation: string(req.Operation),
		Namespace: ns,
		Kind:      kind,
		Name:      name,
		User:      req.UserInfo.Username,
		Groups:    req.UserInfo.Groups,
		Mode:      string(v.Mode),
		Verdict:   Verdict(v),
		Rules:     Rules(v),
	}
	for _, iv := range v.Images {
		if iv.Exception != nil && !slices.Contains(d.Exceptions, iv.Exception.Name) {
			d.Exceptions = append(d.Exceptions, iv.Exception.Name)
		}
	}
	return d
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
