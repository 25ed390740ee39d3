package records

import (
	"bytes"
	"encoding/json"
	"time"

	"buildguard.dev/buildguard/evidence"
)

// DecisionJSON is the stable JSON (and YAML) form of a decision record,
// as `buildguard denials -o json` prints it and the review UI serves it;
// docs/denials.md describes it. Lists are never null.
type DecisionJSON struct {
	ID         string          `json:"id"`
	Time       string          `json:"time"`
	Operation  string          `json:"operation"`
	Namespace  string          `json:"namespace"`
	Kind       string          `json:"kind"`
	Name       string          `json:"name"`
	User       string          `json:"user"`
	Groups     []string        `json:"groups"`
	Mode       string          `json:"mode"`
	Verdict    string          `json:"verdict"`
	Rules      []string        `json:"rules"`
	Exceptions []string        `json:"exceptions"`
	Images     json.RawMessage `json:"images"`
}

// ToJSON returns d in its stable JSON form.
func ToJSON(d evidence.Decision) DecisionJSON {
	orEmpty := func(s []string) []string {
		if s == nil {
			return []string{}
		}
		return s
	}
	images := d.Images
	if len(images) == 0 {
		images = json.RawMessage("[]")
	}
	return DecisionJSON{
		ID: d.ID, Time: d.Time.UTC().Format(time.RFC3339Nano), Operation: d.Operation, Namespace: d.Namespace,
		Kind: d.Kind, Name: d.Name, User: d.User, Groups: orEmpty(d.Groups), Mode: d.Mode, Verdict: d.Verdict,
		Rules: orEmpty(d.Rules), Exceptions: orEmpty(d.Exceptions), Images: images,
	}
}

// ImageRecord is an element of evidence.Decision.Images as Decision
// writes it, read back: one image's verdict, or (Scope ScopeWorkload) the
// findings about the workload. Fields a reader does not need are left out.
type ImageRecord struct {
	Scope         string          `json:"scope"`
	Container     string          `json:"container"`
	ContainerKind string          `json:"containerKind"`
	Image         string          `json:"image"`
	Digest        string          `json:"digest"`
	ConfigDigests []string        `json:"configDigests"`
	Verdict       string          `json:"verdict"`
	ChangeID      string          `json:"changeID"`
	Findings      []FindingRecord `json:"findings"`
	Exception     *ExceptionUsed  `json:"exception"`
	// Checks is what the policy verified (policy.ImageVerdict.Checks);
	// nil in records made before it was recorded.
	Checks []string `json:"checks"`
}

// ExceptionUsed is the exception that admitted an image, as recorded.
type ExceptionUsed struct {
	Name       string `json:"name"`
	Reason     string `json:"reason"`
	Expires    string `json:"expires"`
	ApprovedBy string `json:"approvedBy"`
}

// FindingRecord is a recorded policy.Finding. Evidence keeps each value
// as recorded; EvidenceString shows one.
type FindingRecord struct {
	Rule     string                     `json:"rule"`
	Severity string                     `json:"severity"`
	Action   string                     `json:"action"`
	Message  string                     `json:"message"`
	Summary  string                     `json:"summary"`
	Policy   string                     `json:"policy"`
	Evidence map[string]json.RawMessage `json:"evidence"`
}

// ParseImages reads a decision's Images. An empty value is no images.
func ParseImages(raw json.RawMessage) ([]ImageRecord, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var images []ImageRecord
	if err := json.Unmarshal(raw, &images); err != nil {
		return nil, err
	}
	return images, nil
}

// EvidenceString shows an evidence value: a string as it is, anything
// else as compact JSON.
func EvidenceString(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var c bytes.Buffer
	if json.Compact(&c, raw) == nil {
		return c.String()
	}
	return string(raw)
}
