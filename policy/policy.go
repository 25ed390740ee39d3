// Package policy holds buildguard's policy types and the pure decision:
// facts about a workload and its images go in, a verdict comes out.
// Nothing in this package performs I/O or reads the clock.
package policy

import (
	"fmt"
	"strings"
	"time"
)

// APIVersion is the only policy file version this build reads.
const APIVersion = "buildguard.dev/v1alpha1"

// Kind is the kind of a policy file.
const Kind = "Policy"

// Mode says what happens to a workload the rules would deny.
type Mode string

const (
	// ModeEnforce denies the workload.
	ModeEnforce Mode = "enforce"
	// ModeWarn admits the workload with warnings.
	ModeWarn Mode = "warn"
	// ModeAudit admits the workload (a dry run) and records and annotates
	// that enforce would have denied it.
	ModeAudit Mode = "audit"
)

// Valid reports whether m is one of the known modes.
func (m Mode) Valid() bool {
	return m == ModeEnforce || m == ModeWarn || m == ModeAudit
}

// Action is what a rule's finding does to a verdict.
type Action string

const (
	ActionDeny   Action = "deny"
	ActionWarn   Action = "warn"
	ActionIgnore Action = "ignore"
)

func (a Action) rank() int {
	switch a {
	case ActionDeny:
		return 2
	case ActionWarn:
		return 1
	}
	return 0
}

// FailurePolicy says what to do with an image whose registry cannot be
// reached in time.
type FailurePolicy string

const (
	FailDeny  FailurePolicy = "deny"
	FailAllow FailurePolicy = "allow"
)

// RuleID is the stable identifier of a signal. Rule IDs appear in
// findings, audit annotations and the policy's rules map.
type RuleID string

const (
	RuleUnapprovedRegistry  RuleID = "unapproved-registry"
	RuleUnresolvableImage   RuleID = "unresolvable-image"
	RuleFreshImage          RuleID = "fresh-image"
	RuleSuspiciousBuildStep RuleID = "suspicious-build-step"
	RuleRuntimeSocketMount  RuleID = "runtime-socket-mount"
	// RuleRegistryUnavailable is reported when a registry could not be
	// reached in time. Its action comes from failurePolicy, not from rules.
	RuleRegistryUnavailable RuleID = "registry-unavailable"
	// RuleInvalidModeLabel is reported when a namespace carries a
	// buildguard.dev/mode label with an unknown value; buildguard then
	// fails closed and enforces.
	RuleInvalidModeLabel RuleID = "invalid-mode-label"
)

// DefaultActions are the actions of rules the policy's rules map omits.
var defaultActions = map[RuleID]Action{
	RuleUnapprovedRegistry:   ActionDeny,
	RuleUnresolvableImage:    ActionDeny,
	RuleFreshImage:           ActionDeny,
	RuleSuspiciousBuildStep:  ActionDeny,
	RuleRuntimeSocketMount:   ActionWarn,
	RuleHostBuilt:            ActionDeny,
	RuleUntrustedEgress:      ActionDeny,
	RuleOutsideReleaseWindow: ActionDeny,
	RuleEmergencyChange:      ActionWarn,
	RuleUnsigned:             ActionDeny,
	RuleUntrustedSigner:      ActionDeny,
	RuleMissingProvenance:    ActionDeny,
	RuleUnapprovedBuilder:    ActionDeny,
	RuleUnapprovedSource:     ActionDeny,

	// Signature, attestation and build-time checks.
	RuleVSAFailed:               ActionDeny,
	RuleVSAStale:                ActionDeny,
	RuleInconsistentCreatedTime: ActionDeny,
}

// DefaultAction returns the action of rule when a policy does not set one,
// and false for an unknown or non-configurable rule.
func DefaultAction(rule RuleID) (Action, bool) {
	a, ok := defaultActions[rule]
	return a, ok
}

// Rules lists the configurable rule IDs in a stable order.
func Rules() []RuleID {
	return []RuleID{RuleUnapprovedRegistry, RuleUnresolvableImage, RuleFreshImage, RuleSuspiciousBuildStep, RuleRuntimeSocketMount,
		RuleOutsideReleaseWindow, RuleEmergencyChange,
		RuleUnsigned, RuleUntrustedSigner, RuleMissingProvenance, RuleUnapprovedBuilder, RuleUnapprovedSource, RuleHostBuilt, RuleUntrustedEgress,
		RuleVSAFailed, RuleVSAStale, RuleInconsistentCreatedTime}
}

// Severity grades a finding independently of the action the policy takes.
type Severity string

const (
	SeverityLow      Severity = "low"
	SeverityMedium   Severity = "medium"
	SeverityHigh     Severity = "high"
	SeverityCritical Severity = "critical"
)

// Spec is the body of a policy: the fields of a policy file, and later the
// spec of a ClusterBuildPolicy. It is plain data; Compile checks it.
type Spec struct {
	// Mode is enforce, warn or audit. The default is enforce.
	Mode Mode `json:"mode,omitempty" yaml:"mode,omitempty"`
	// FailurePolicy applies when a registry cannot be reached in time:
	// deny or allow. The default is deny.
	FailurePolicy FailurePolicy `json:"failurePolicy,omitempty" yaml:"failurePolicy,omitempty"`
	Registries    Registries    `json:"registries,omitempty" yaml:"registries,omitempty"`
	Freshness     Freshness     `json:"freshness,omitempty" yaml:"freshness,omitempty"`
	// TrustedSources are hosts, host globs (*.example.com), CIDRs and URL
	// prefixes (github.com/tianon/gosu/releases/) a build step may
	// download from. See ParseSources.
	TrustedSources []string `json:"trustedSources,omitempty" yaml:"trustedSources,omitempty"`
	// BuildSteps tunes the suspicious-build-step rule.
	BuildSteps *BuildSteps `json:"buildSteps,omitempty" yaml:"buildSteps,omitempty"`
	// Rules maps a rule ID to deny, warn or ignore. Rules left out keep
	// their defaults: runtime-socket-mount warns, every other rule denies.
	Rules map[RuleID]Action `json:"rules,omitempty" yaml:"rules,omitempty"`
	// Exceptions admit matching images whatever the rules find.
	Exceptions []Exception `json:"exceptions,omitempty" yaml:"exceptions,omitempty"`
	// ChangeControl says when image changes may roll out. The default is
	// at any time.
	ChangeControl *ChangeControl `json:"changeControl,omitempty" yaml:"changeControl,omitempty"`
	// PinDigests makes the mutating webhook rewrite each image to the
	// digest that was judged (repo:tag@sha256:…), so the tag cannot move
	// between admission and pull. The default is true.
	PinDigests *bool `json:"pinDigests,omitempty" yaml:"pinDigests,omitempty"`
	// NodeEvidence says what node reports of image builds and their
	// connections mean. The default is to not use them.
	NodeEvidence *NodeEvidence `json:"nodeEvidence,omitempty" yaml:"nodeEvidence,omitempty"`
	// Signatures says which cosign signatures an image must carry.
	Signatures Signatures `json:"signatures,omitempty" yaml:"signatures,omitempty"`
	// Provenance says which SLSA provenance an image must carry.
	Provenance ProvenanceRequirements `json:"provenance,omitempty" yaml:"provenance,omitempty"`
}

// BuildSteps tunes the suspicious-build-step rule.
type BuildSteps struct {
	// VerifiedDownloads is the action on a step whose only findings are
	// downloads from outside trustedSources that the same step verified
	// (sha256sum -c, gpg --verify of the fetched file, ADD --checksum),
	// and those files made executable or run: deny, warn or ignore. It
	// never makes the rule stricter than rules["suspicious-build-step"].
	// The default is the rule's action.
	VerifiedDownloads Action `json:"verifiedDownloads,omitempty" yaml:"verifiedDownloads,omitempty"`
}

// Registries says which registries and repositories may be used.
type Registries struct {
	// Allow are globs over "registry/repository", e.g. "ghcr.io/acme/*".
	// "*" matches within one path segment, "**" across segments.
	// Docker Hub short names are normalised first: "nginx" is
	// "index.docker.io/library/nginx", and "docker.io/" in a glob means
	// "index.docker.io/". Images matching none are denied and their
	// registry is never contacted. An empty list allows nothing.
	Allow []string `json:"allow,omitempty" yaml:"allow,omitempty"`
	// Insecure are globs over "host:port" of registries reached over plain
	// HTTP, e.g. "127.0.0.1:*".
	Insecure []string `json:"insecure,omitempty" yaml:"insecure,omitempty"`
}

// Freshness configures the fresh-image rule.
type Freshness struct {
	// MinAge is how old an image must be at admission. The default is 10m.
	MinAge Duration `json:"minAge,omitempty" yaml:"minAge,omitempty"`
	// MaxClockSkew is how far in the future a created time may lie before
	// it is flagged. The default is 1m.
	MaxClockSkew Duration `json:"maxClockSkew,omitempty" yaml:"maxClockSkew,omitempty"`
}

// Exception admits images that match it until it expires.
type Exception struct {
	// Images are digest references (repo@sha256:...) or globs over
	// "registry/repository" with the same syntax as registries.allow.
	Images []string `json:"images" yaml:"images"`
	// Reason is required: a ticket or a sentence.
	Reason string `json:"reason" yaml:"reason"`
	// Expires is required, in RFC 3339.
	Expires string `json:"expires" yaml:"expires"`
	// ApprovedBy names who approved the exception.
	ApprovedBy string `json:"approvedBy,omitempty" yaml:"approvedBy,omitempty"`
	// Name identifies the exception in findings and annotations. The
	// default is "exceptions[i]" for the i-th exception of a file.
	Name string `json:"name,omitempty" yaml:"name,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("10m").
type Duration struct{ time.Duration }

// UnmarshalText parses a Go duration string.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("invalid duration %q (use e.g. 90s, 10m, 1h30m)", string(b))
	}
	d.Duration = v
	return nil
}

// MarshalText formats d as a Go duration string.
func (d Duration) MarshalText() ([]byte, error) {
	return []byte(d.Duration.String()), nil
}

// IsZero reports whether d is unset; omitempty uses it.
func (d Duration) IsZero() bool { return d.Duration == 0 }
