package check

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"

	"buildguard.dev/buildguard/policy"
)

// SARIFSchema is the JSON schema a SARIF log of WriteSARIF names.
const SARIFSchema = "https://json.schemastore.org/sarif-2.1.0.json"

// ruleText says what each rule finds, for SARIF's rule descriptions;
// docs/policy.md has the details.
var ruleText = map[policy.RuleID]string{
	policy.RuleUnapprovedRegistry:      "The image's registry or repository is not in registries.allow, or resolves to a forbidden address.",
	policy.RuleUnresolvableImage:       "The image's tag or digest is not in its registry: the mark of an image built on a node and run from its local store.",
	policy.RuleFreshImage:              "The image was created less than freshness.minAge before admission.",
	policy.RuleInconsistentCreatedTime: "The image's build history or a node's report is dated after its created time.",
	policy.RuleSuspiciousBuildStep:     "A build step downloads from outside trustedSources, pipes a download to a shell, runs a decoded payload, or executes a fetched file.",
	policy.RuleRuntimeSocketMount:      "A container mounts a container runtime socket from the node: the means to build images there.",
	policy.RuleRegistryUnavailable:     "The image's registry could not be asked in time; the verdict follows failurePolicy.",
	policy.RuleHostBuilt:               "A node outside nodeEvidence.approvedBuildNodes reported building the image.",
	policy.RuleUntrustedEgress:         "While the image was built, its build connected outside nodeEvidence.trustedDestinations.",
	policy.RuleImplausibleBuildTime:    "A node reported a build of the image dated implausibly: a broken clock or a forged report.",
	policy.RuleOutsideReleaseWindow:    "An image change outside the release windows or during a freeze, without a change ID that allows it.",
	policy.RuleEmergencyChange:         "An emergency change ID let an image change through.",
	policy.RuleUnsigned:                "No signature where signatures.on wants one.",
	policy.RuleUntrustedSigner:         "Signatures were found, none by a key or identity the policy trusts.",
	policy.RuleMissingProvenance:       "No verified SLSA provenance names the image's digest.",
	policy.RuleUnapprovedBuilder:       "The image's provenance names a builder outside provenance.builders.",
	policy.RuleUnapprovedSource:        "The image's provenance names no source repository in provenance.sources.",
	policy.RuleVSAFailed:               "The newest verification summary of a trusted verifier failed the image.",
	policy.RuleVSAStale:                "The image's verification summary is older than provenance.vsa.maxAge.",
	policy.RuleInvalidModeLabel:        "The namespace's buildguard.dev/mode label is not a mode; buildguard enforces.",
}

// securitySeverity is GitHub code scanning's numeric severity of a
// finding's severity.
var securitySeverity = map[policy.Severity]string{
	policy.SeverityCritical: "9.5", policy.SeverityHigh: "8.0", policy.SeverityMedium: "5.5", policy.SeverityLow: "3.0",
}

// The SARIF 2.1.0 objects WriteSARIF writes (OASIS SARIF 2.1.0, §3).
type (
	sarifLog struct {
		Schema  string     `json:"$schema"`
		Version string     `json:"version"`
		Runs    []sarifRun `json:"runs"`
	}
	sarifRun struct {
		Tool        sarifTool         `json:"tool"`
		Invocations []sarifInvocation `json:"invocations"`
		Results     []sarifResult     `json:"results"`
		ColumnKind  string            `json:"columnKind"`
	}
	sarifTool struct {
		Driver sarifDriver `json:"driver"`
	}
	sarifDriver struct {
		Name    string      `json:"name"`
		Version string      `json:"version,omitempty"`
		Rules   []sarifRule `json:"rules"`
	}
	sarifRule struct {
		ID                   string         `json:"id"`
		ShortDescription     sarifMessage   `json:"shortDescription"`
		DefaultConfiguration sarifConfig    `json:"defaultConfiguration"`
		Properties           map[string]any `json:"properties,omitempty"`
	}
	sarifConfig struct {
		Level string `json:"level"`
	}
	sarifMessage struct {
		Text string `json:"text"`
	}
	sarifInvocation struct {
		ExecutionSuccessful bool                `json:"executionSuccessful"`
		Notifications       []sarifNotification `json:"toolExecutionNotifications,omitempty"`
	}
	sarifNotification struct {
		Level     string          `json:"level"`
		Message   sarifMessage    `json:"message"`
		Locations []sarifLocation `json:"locations,omitempty"`
	}
	sarifResult struct {
		RuleID              string             `json:"ruleId"`
		RuleIndex           int                `json:"ruleIndex"`
		Level               string             `json:"level"`
		Message             sarifMessage       `json:"message"`
		Locations           []sarifLocation    `json:"locations"`
		PartialFingerprints map[string]string  `json:"partialFingerprints"`
		Suppressions        []sarifSuppression `json:"suppressions,omitempty"`
		Properties          map[string]any     `json:"properties,omitempty"`
	}
	sarifLocation struct {
		PhysicalLocation sarifPhysical     `json:"physicalLocation"`
		LogicalLocations []sarifLogicalLoc `json:"logicalLocations,omitempty"`
	}
	sarifPhysical struct {
		ArtifactLocation sarifArtifact `json:"artifactLocation"`
		Region           sarifRegion   `json:"region"`
	}
	sarifArtifact struct {
		URI string `json:"uri"`
	}
	sarifRegion struct {
		StartLine   int `json:"startLine"`
		StartColumn int `json:"startColumn,omitempty"`
	}
	sarifLogicalLoc struct {
		FullyQualifiedName string `json:"fullyQualifiedName"`
		Kind               string `json:"kind"`
	}
	sarifSuppression struct {
		Kind          string `json:"kind"`
		Justification string `json:"justification"`
	}
)

// fingerprintKey names buildguard's partial fingerprint: the same finding
// on the same container of the same object in the same file has the same
// one from run to run, wherever the line moves.
const fingerprintKey = "buildguardFinding/v1"

// WriteSARIF writes the report as a SARIF 2.1.0 log of one run of the
// tool buildguard (of version, when not empty). Each finding that is not
// ignored is a result at the file, line and column of its container's
// image (a workload's own findings, at the object); its level is error for
// a deny action, warning for a warn action. A finding an exception admits
// carries a suppression naming it. Workloads that could not be judged,
// or were not, are notifications of the invocation.
func WriteSARIF(w io.Writer, r *Report, version string) error {
	run := sarifRun{Tool: sarifTool{Driver: sarifDriver{Name: "buildguard", Version: version}}, Results: []sarifResult{}, ColumnKind: "unicodeCodePoints"}
	index := map[string]int{}
	ruleIndex := func(id policy.RuleID, action policy.Action) int {
		if i, ok := index[string(id)]; ok {
			return i
		}
		text := ruleText[id]
		if text == "" {
			text = "buildguard rule " + string(id) + "."
		}
		level := "error"
		if a, ok := policy.DefaultAction(id); ok && a == policy.ActionWarn || !ok && action == policy.ActionWarn {
			level = "warning"
		}
		run.Tool.Driver.Rules = append(run.Tool.Driver.Rules, sarifRule{
			ID: string(id), ShortDescription: sarifMessage{Text: text}, DefaultConfiguration: sarifConfig{Level: level},
			Properties: map[string]any{"tags": []string{"security", "supply-chain", "T1612"}},
		})
		index[string(id)] = len(run.Tool.Driver.Rules) - 1
		return index[string(id)]
	}
	// Every rule, in a stable order, so that ruleIndex does not depend on
	// what was found.
	for _, id := range append(policy.Rules(), policy.RuleRegistryUnavailable, policy.RuleImplausibleBuildTime, policy.RuleInvalidModeLabel) {
		ruleIndex(id, "")
	}
	inv := sarifInvocation{ExecutionSuccessful: !r.Failed()}
	for i := range r.Results {
		res := &r.Results[i]
		uri := fileURI(res.File)
		object := fmt.Sprintf("%s/%s/%s", res.Namespace, res.Kind, res.Name)
		at := func(line, col int, logical string) []sarifLocation {
			return []sarifLocation{{
				PhysicalLocation: sarifPhysical{ArtifactLocation: sarifArtifact{URI: uri}, Region: sarifRegion{StartLine: max(line, 1), StartColumn: col}},
				LogicalLocations: []sarifLogicalLoc{{FullyQualifiedName: logical, Kind: "resource"}},
			}}
		}
		switch {
		case res.Error != "":
			inv.Notifications = append(inv.Notifications, sarifNotification{Level: "error",
				Message: sarifMessage{Text: fmt.Sprintf("%s %s not judged: %s", res.Kind, object, res.Error)}, Locations: at(res.Line, 0, object)})
			continue
		case res.Skipped != "":
			inv.Notifications = append(inv.Notifications, sarifNotification{Level: "note",
				Message: sarifMessage{Text: fmt.Sprintf("%s %s not judged: %s", res.Kind, object, res.Skipped)}, Locations: at(res.Line, 0, object)})
			continue
		}
		add := func(f policy.Finding, line, col int, logical, container, image, digest string, ex *policy.ExceptionUse) {
			if f.Action == policy.ActionIgnore {
				return
			}
			level := "error"
			if f.Action == policy.ActionWarn {
				level = "warning"
			}
			what := res.Kind + " " + res.Namespace + "/" + res.Name
			if container != "" {
				what += ", container " + container
			}
			props := map[string]any{"severity": string(f.Severity), "action": string(f.Action), "mode": string(res.Mode),
				"security-severity": securitySeverity[f.Severity]}
			if image != "" {
				props["image"], props["digest"] = image, digest
			}
			if f.Policy != "" {
				props["policy"] = f.Policy
			}
			if len(f.Evidence) > 0 {
				props["evidence"] = f.Evidence
			}
			sum := sha256.Sum256([]byte(strings.Join([]string{string(f.Rule), res.File, res.Kind, res.Namespace, res.Name, container, image}, "\x00")))
			sr := sarifResult{
				RuleID: string(f.Rule), RuleIndex: ruleIndex(f.Rule, f.Action), Level: level,
				Message:             sarifMessage{Text: what + ": " + f.Message},
				Locations:           at(line, col, logical),
				PartialFingerprints: map[string]string{fingerprintKey: hex.EncodeToString(sum[:16])},
				Properties:          props,
			}
			if ex != nil {
				sr.Suppressions = []sarifSuppression{{Kind: "external",
					Justification: fmt.Sprintf("exception %s: %s (expires %s)", ex.Name, ex.Reason, ex.Expires.UTC().Format("2006-01-02T15:04:05Z"))}}
			}
			run.Results = append(run.Results, sr)
		}
		for _, im := range res.Images {
			for _, f := range im.Findings {
				add(f, im.Line, im.Column, object+"/"+containerField(im.ContainerKind)+"/"+im.Container, im.Container, im.Image, im.Digest, im.Exception)
			}
		}
		for _, f := range res.Findings {
			add(f, res.Line, 0, object, "", "", "", nil)
		}
	}
	run.Invocations = []sarifInvocation{inv}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(sarifLog{Schema: SARIFSchema, Version: "2.1.0", Runs: []sarifRun{run}})
}

// containerField is the pod spec's list of containers of kind k.
func containerField(k policy.ContainerKind) string {
	switch k {
	case policy.KindInitContainer:
		return "initContainers"
	case policy.KindEphemeralContainer:
		return "ephemeralContainers"
	}
	return "containers"
}

// fileURI is the URI of a manifest for SARIF: a relative reference for a
// relative path (what code scanning services resolve against the
// repository), a file: URI for an absolute one, "stdin" for standard
// input.
func fileURI(file string) string {
	if file == "-" {
		return "stdin"
	}
	p := filepath.ToSlash(filepath.Clean(file))
	segs := strings.Split(p, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	p = strings.Join(segs, "/")
	if filepath.IsAbs(file) {
		return "file://" + p
	}
	if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ":") {
		// "a:b.yaml" would read as a scheme.
		p = "./" + p
	}
	return p
}
