package policy

import (
	"fmt"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"buildguard.dev/buildguard/internal/shorten"
)

// Outcome is what the rules decide for an image or a workload, before the
// mode is applied: allow, warn or deny.
type Outcome string

const (
	OutcomeAllow Outcome = "allow"
	OutcomeWarn  Outcome = "warn"
	OutcomeDeny  Outcome = "deny"
)

func outcomeOf(a Action) Outcome {
	switch a {
	case ActionDeny:
		return OutcomeDeny
	case ActionWarn:
		return OutcomeWarn
	}
	return OutcomeAllow
}

func (o Outcome) rank() int {
	switch o {
	case OutcomeDeny:
		return 2
	case OutcomeWarn:
		return 1
	}
	return 0
}

// Verdict is the decision on one workload.
type Verdict struct {
	// Mode is the mode in force for the workload's namespace.
	Mode Mode `json:"mode"`
	// Outcome is what the rules decide, before the mode is applied. In
	// audit mode a deny Outcome is a "would deny".
	Outcome Outcome `json:"verdict"`
	// Allowed is false only when Outcome is deny and Mode is enforce.
	Allowed bool `json:"allowed"`
	// Images has one entry per container, in pod spec order.
	Images []ImageVerdict `json:"images"`
	// Findings are about the workload rather than one image.
	Findings []Finding `json:"findings,omitempty"`
	// ChangeID is the change ID that allowed an image change outside the
	// release windows or during a freeze, if one did.
	ChangeID string `json:"changeID,omitempty"`
	// Pin is true when a policy in force wants images pinned to digests.
	Pin bool `json:"-"`
}

// ImageVerdict is the decision on one container's image.
type ImageVerdict struct {
	Container     string        `json:"container,omitempty"`
	ContainerKind ContainerKind `json:"containerKind,omitempty"`
	Image         string        `json:"image"`
	Digest        string        `json:"digest,omitempty"`
	// ConfigDigests are the config digests (Docker image IDs) of every
	// platform of the image, the key node reports of builds use.
	ConfigDigests []string  `json:"configDigests,omitempty"`
	Outcome       Outcome   `json:"verdict"`
	Findings      []Finding `json:"findings"`
	// Exception is the exception that admitted the image despite its
	// findings, if any.
	Exception *ExceptionUse `json:"exception,omitempty"`
	// Checks lists what a policy verified about the image beyond what its
	// findings say, so that a record of an image without signature
	// findings tells "signed as required" from "not checked":
	// CheckSignatures when signatures.required, CheckProvenance when the
	// policy has provenance settings (provenance.required, builders,
	// sources or VSAs). Empty, never null, when nothing was checked, as
	// for an image that was not resolved.
	Checks []string `json:"checks"`
	// Watch are the nodes and times whose connections count as the
	// connections of the image's builds (see ConnectionWindow): a
	// connection reported later inside one can change the verdict. Not
	// part of the decision record.
	Watch []ConnectionWindow `json:"-"`
}

// ExceptionUse records an exception that applied to an image.
type ExceptionUse struct {
	Name       string    `json:"name"`
	Reason     string    `json:"reason"`
	Expires    time.Time `json:"expires"`
	ApprovedBy string    `json:"approvedBy,omitempty"`
}

// Finding is one signal raised against an image or a workload.
type Finding struct {
	Rule     RuleID   `json:"rule"`
	Severity Severity `json:"severity"`
	// Action is what the policy does with the finding.
	Action  Action `json:"action"`
	Message string `json:"message"`
	// Summary is the finding in a few words.
	Summary string `json:"summary"`
	// Evidence holds the facts behind the finding; keys are stable.
	Evidence map[string]any `json:"evidence,omitempty"`
	// Policy names the ClusterBuildPolicy that raised the finding; empty
	// for a policy file.
	Policy string `json:"policy,omitempty"`
}

// Decide judges a workload. It is a pure function of p and f.
func Decide(p *Policy, f Facts) Verdict {
	v := Verdict{Mode: p.mode, Outcome: OutcomeAllow, Pin: p.PinDigests()}
	if f.NamespaceMode != "" {
		if m := Mode(f.NamespaceMode); m.Valid() {
			v.Mode = m
		} else {
			// Fail closed: a typo in a label must not switch enforcement off.
			v.Mode = ModeEnforce
			v.Findings = append(v.Findings, p.finding(RuleInvalidModeLabel, SeverityMedium,
				fmt.Sprintf("namespace %s has buildguard.dev/mode=%q, which is not enforce, warn or audit; enforcing", f.Namespace, f.NamespaceMode),
				map[string]any{"namespace": f.Namespace, "label": f.NamespaceMode}))
		}
	}
	hostPaths := make(map[string]string, len(f.HostPaths))
	for _, h := range f.HostPaths {
		hostPaths[h.Volume] = h.Path
	}
	v.Images = make([]ImageVerdict, 0, len(f.Containers))
	for _, c := range f.Containers {
		iv := p.decideImage(c, f.Now, hostPaths, f.Exceptions)
		if iv.Outcome.rank() > v.Outcome.rank() {
			v.Outcome = iv.Outcome
		}
		v.Images = append(v.Images, iv)
	}
	p.applyChangeControl(f, &v)
	for _, fd := range v.Findings {
		if o := outcomeOf(fd.Action); o.rank() > v.Outcome.rank() {
			v.Outcome = o
		}
	}
	v.Allowed = !(v.Outcome == OutcomeDeny && v.Mode == ModeEnforce)
	return v
}

func (p *Policy) finding(rule RuleID, sev Severity, msg string, ev map[string]any) Finding {
	return Finding{Rule: rule, Severity: sev, Action: p.Action(rule), Message: msg, Summary: summary(rule, msg, ev), Evidence: ev, Policy: p.name}
}

// summary is a finding in a few words, for places as narrow as an
// admission warning (120 bytes, container and rule included).
func summary(rule RuleID, msg string, ev map[string]any) string {
	switch rule {
	case RuleFreshImage:
		if _, future := ev["maxClockSkew"]; future {
			return fmt.Sprintf("created in the future (%v)", ev["created"])
		}
		if src, _ := ev["timeSource"].(string); src != "" && src != TimeSourceConfig {
			return fmt.Sprintf("%ds old by %s, minAge %v", ev["ageSeconds"], src, ev["minAge"])
		}
		return fmt.Sprintf("created %ds before admission, minAge %v", ev["ageSeconds"], ev["minAge"])
	case RuleSuspiciousBuildStep:
		kinds := ev["kinds"].([]string)
		s := fmt.Sprintf("step %v: %s", ev["stepIndex"], kinds[0])
		if _, ok := ev["stepIndex"]; !ok {
			s = "run command: " + kinds[0]
		}
		if hosts, ok := ev["hosts"].([]string); ok {
			s += " from " + hosts[0]
		}
		if len(kinds) > 1 {
			s += fmt.Sprintf(" (+%d)", len(kinds)-1)
		}
		return s
	case RuleUnapprovedRegistry:
		if ev["forbiddenAddress"] == true {
			return fmt.Sprintf("%v leads to a link-local/metadata address", ev["repository"])
		}
		return fmt.Sprintf("%v is not in registries.allow", ev["repository"])
	case RuleUnresolvableImage:
		return fmt.Sprintf("%v in its registry", ev["reason"])
	case RuleRegistryUnavailable:
		return fmt.Sprintf("registry %v %v", ev["registry"], ev["reason"])
	case RuleRuntimeSocketMount:
		return fmt.Sprintf("mounts %v", ev["socket"])
	case RuleHostBuilt:
		return fmt.Sprintf("built on node %v", ev["node"])
	case RuleImplausibleBuildTime:
		if b, ok := ev["build"].(map[string]any); ok {
			return fmt.Sprintf("build on node %v dated %v: %v", b["node"], b["finished"], ev["reason"])
		}
	case RuleUntrustedEgress:
		if cs, ok := ev["connections"].([]map[string]any); ok && len(cs) > 0 {
			return fmt.Sprintf("build on %v connected to %v:%v", cs[0]["node"], cs[0]["destIP"], cs[0]["destPort"])
		}
	case RuleUnsigned, RuleUntrustedSigner, RuleMissingProvenance, RuleUnapprovedBuilder, RuleUnapprovedSource,
		RuleVSAFailed, RuleVSAStale, RuleInconsistentCreatedTime:
		return provenanceSummary(rule, ev)
	}
	return msg
}

func (p *Policy) decideImage(c Container, now time.Time, hostPaths map[string]string, extra Exceptions) ImageVerdict {
	iv := ImageVerdict{Container: c.Name, ContainerKind: c.Kind, Image: c.Image, Outcome: OutcomeAllow, Findings: []Finding{}, Checks: []string{}}
	if c.Resolved != nil {
		iv.Digest = c.Resolved.Digest
		for _, pl := range c.Resolved.Platforms {
			if pl.ConfigDigest != "" {
				iv.ConfigDigests = append(iv.ConfigDigests, pl.ConfigDigest)
			}
		}
	}
	iv.Findings = append(iv.Findings, p.socketFindings(c, hostPaths)...)

	ref, err := c.Ref, error(nil)
	if ref == nil {
		ref, err = name.ParseReference(c.Image)
	}
	switch {
	case err != nil:
		iv.Findings = append(iv.Findings, p.finding(RuleUnresolvableImage, SeverityHigh,
			fmt.Sprintf("image reference %q does not parse: %v", c.Image, err),
			map[string]any{"reason": string(ErrInvalidReference)}))
	case !p.RegistryAllowed(ref.Context()):
		iv.Findings = append(iv.Findings, p.unapproved(ref))
	case c.Err != nil:
		iv.Findings = append(iv.Findings, p.lookupFailure(c, ref))
	case c.Resolved != nil:
		iv.Findings = append(iv.Findings, p.freshness(c.Resolved, now, p.trustedTimes(c, c.Resolved, now))...)
		iv.Findings = append(iv.Findings, p.inconsistentCreated(c, c.Resolved, now)...)
		iv.Findings = append(iv.Findings, p.buildSteps(c.Resolved)...)
		iv.Findings = append(iv.Findings, p.nodeFindings(c.Builds, c.Resolved, now)...)
		iv.Watch = p.connectionWindows(c.Builds, c.Resolved, now)
		if p.prov.enabled { // spare the repository's name
			iv.Findings = append(iv.Findings, p.provenanceFindings(c, c.Resolved, ref.Context().Name(), now)...)
		}
		iv.Checks = p.checks()
	}

	if err == nil {
		// use is declared where it is found: taking its address makes
		// it an allocation, not to be paid for every image.
		if use, ok := exceptionFor(p.exceptions, ref, iv.Digest, now); ok {
			u := use
			iv.Exception = &u
		} else if use, ok := exceptionFor(extra.list, ref, iv.Digest, now); ok {
			u := use
			iv.Exception = &u
		}
	}
	for _, fd := range iv.Findings {
		if o := outcomeOf(fd.Action); o.rank() > iv.Outcome.rank() {
			iv.Outcome = o
		}
	}
	if iv.Exception != nil {
		iv.Outcome = OutcomeAllow
	}
	return iv
}

func (p *Policy) unapproved(ref name.Reference) Finding {
	repo := ref.Context()
	msg := fmt.Sprintf("registry/repository %s is not in registries.allow", repo.Name())
	ev := map[string]any{"repository": repo.Name()}
	if ForbiddenHost(repo.RegistryStr()) {
		msg = fmt.Sprintf("registry %s is a link-local or cloud-metadata address and is never contacted", repo.RegistryStr())
		ev["forbiddenAddress"] = true
	}
	return p.finding(RuleUnapprovedRegistry, SeverityHigh, msg, ev)
}

// forbidden is the finding for a registry buildguard refused to contact
// when it resolved or redirected to a link-local or metadata address:
// unapproved-registry, as for one written as such an address, whatever
// failurePolicy says. ev is added to.
func (p *Policy) forbidden(registry string, err *ResolveError, ev map[string]any) Finding {
	ev["forbiddenAddress"] = true
	ev["reason"] = string(err.Kind)
	ev["error"] = err.Message
	return p.finding(RuleUnapprovedRegistry, SeverityHigh,
		fmt.Sprintf("registry %s leads to a link-local or cloud-metadata address and is never contacted (%s)", registry, err.Message), ev)
}

func (p *Policy) lookupFailure(c Container, ref name.Reference) Finding {
	ev := map[string]any{"reason": string(c.Err.Kind), "registry": ref.Context().RegistryStr(), "error": c.Err.Message}
	switch c.Err.Kind {
	case ErrForbiddenAddress:
		return p.forbidden(ref.Context().RegistryStr(), c.Err, map[string]any{"repository": ref.Context().Name()})
	case ErrNotFound, ErrInvalidImage, ErrTooLarge:
		policy := effectivePullPolicy(c.PullPolicy, ref)
		ev["imagePullPolicy"] = policy
		sev := SeverityMedium
		msg := fmt.Sprintf("image %s does not exist in registry %s", ref.String(), ref.Context().RegistryStr())
		switch c.Err.Kind {
		case ErrInvalidImage:
			msg = fmt.Sprintf("registry %s serves no valid image for %s", ref.Context().RegistryStr(), ref.String())
		case ErrTooLarge:
			msg = fmt.Sprintf("image %s is larger than buildguard reads or judges (%s)", ref.String(), c.Err.Message)
		}
		if policy == "Never" || policy == "IfNotPresent" {
			sev = SeverityHigh
			msg += fmt.Sprintf("; with imagePullPolicy %s a node runs it from its local store, the mark of an image built on that node", policy)
		}
		return p.finding(RuleUnresolvableImage, sev, msg, ev)
	default:
		msg := fmt.Sprintf("registry %s could not be asked about %s in time (%s); failurePolicy is %s", ref.Context().RegistryStr(), ref.String(), c.Err.Kind, p.failure)
		return p.finding(RuleRegistryUnavailable, SeverityMedium, msg, ev)
	}
}

// effectivePullPolicy applies the Kubernetes default: Always for :latest
// or no tag, IfNotPresent otherwise.
func effectivePullPolicy(set string, ref name.Reference) string {
	if set != "" {
		return set
	}
	if t, ok := ref.(name.Tag); ok && t.TagStr() == "latest" {
		return "Always"
	}
	return "IfNotPresent"
}

// freshness flags every platform created less than minAge before now, or
// further than maxClockSkew in the future. One fresh child of an index is
// enough: the node that pulls it runs that child.
//
// trusted holds, per platform digest, the earliest time the digest
// provably existed (trustedTimes); it is used instead of config created,
// which the build writes itself, and the evidence says which
// (timeSource, and configCreated beside it).
func (p *Policy) freshness(img *Image, now time.Time, trusted map[string]trustedTime) []Finding {
	var out []Finding
	for _, pl := range img.Platforms {
		created, source, detail := pl.Created, TimeSourceConfig, ""
		if t, ok := trusted[pl.Digest]; ok {
			created, source, detail = t.at, t.source, t.detail
		}
		if created.IsZero() || created.Unix() <= 0 {
			continue // reproducible builds write epoch zero: unknown, not fresh
		}
		age := now.Sub(created)
		if -age <= p.maxClockSkew && age >= p.minAge {
			continue // old enough: no evidence to build
		}
		ev := map[string]any{
			"created":      created.UTC().Format(time.RFC3339),
			"ageSeconds":   int64(age / time.Second),
			"minAge":       human(p.minAge),
			"configDigest": pl.ConfigDigest,
			"timeSource":   source,
		}
		if pl.Platform != "" {
			ev["platform"] = pl.Platform
		}
		what := "was created"
		if source != TimeSourceConfig {
			what = "provably existed only"
			if source == TimeSourceAttestation || source == TimeSourceNodeReport {
				what = "was built"
			}
			ev["timeSourceDetail"] = detail
			if !pl.Created.IsZero() {
				ev["configCreated"] = pl.Created.UTC().Format(time.RFC3339)
			}
		}
		on := ""
		if pl.Platform != "" {
			on = " (" + pl.Platform + ")"
		}
		by := ""
		if source != TimeSourceConfig {
			by = fmt.Sprintf(" by %s (%s)", source, detail)
		}
		switch {
		case -age > p.maxClockSkew:
			ev["maxClockSkew"] = human(p.maxClockSkew)
			out = append(out, p.finding(RuleFreshImage, SeverityHigh,
				fmt.Sprintf("image%s claims to be created at %s, %s in the future (more than maxClockSkew %s)", on, ev["created"], human((-age).Round(time.Second)), human(p.maxClockSkew)),
				ev))
		case age < p.minAge:
			if age < 0 {
				age = 0
			}
			out = append(out, p.finding(RuleFreshImage, SeverityHigh,
				fmt.Sprintf("image%s %s %s before admission (%s%s), less than freshness.minAge %s", on, what, human(age.Round(time.Second)), ev["created"], by, human(p.minAge)),
				ev))
		}
	}
	return out
}

// human formats a duration without zero units: "10m", not "10m0s".
func human(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// maxQuotedStep bounds how much of a build step a finding quotes.
const maxQuotedStep = 160

// buildSteps analyses the history and run config of every platform and
// reports each suspicious step once, listing the platforms it appears in.
// A step's findings depend on the image around it (its environment, files
// earlier steps fetched), so steps are the same only when their text and
// findings are.
func (p *Policy) buildSteps(img *Image) []Finding {
	var out []Finding
	seen := map[string]int{} // step text and findings → index in out
	for _, pl := range img.Platforms {
		for _, r := range p.steps.analyze(pl, p.sources) {
			key := r.Step + "\x00" + kindsOf(r.Findings)
			if j, ok := seen[key]; ok {
				if pl.Platform != "" {
					out[j].Evidence["platforms"] = append(out[j].Evidence["platforms"].([]string), pl.Platform)
				}
				continue
			}
			f := p.stepFinding(r, pl)
			seen[key] = len(out)
			out = append(out, f)
		}
	}
	for _, f := range out {
		if pls := f.Evidence["platforms"].([]string); len(pls) == 0 {
			delete(f.Evidence, "platforms")
		} else {
			sort.Strings(pls)
		}
	}
	return out
}

// stepFinding turns the analysis of one step into a finding.
func (p *Policy) stepFinding(r StepReport, pl Platform) Finding {
	var kinds, hosts, urls, verified []string
	var fetchedIn []int
	sev := SeverityMedium
	onlyVerified := true
	for _, sf := range r.Findings {
		kinds = appendUnique(kinds, string(sf.Kind))
		if sf.Host != "" {
			hosts = appendUnique(hosts, sf.Host)
		}
		if sf.URL != "" {
			urls = appendUnique(urls, sf.URL)
		}
		if sf.Verified != "" {
			verified = appendUnique(verified, sf.Verified)
		}
		if sf.CrossStep && !containsInt(fetchedIn, sf.FetchedIn) {
			fetchedIn = append(fetchedIn, sf.FetchedIn)
		}
		switch sf.Kind {
		case StepReverseShell, StepCryptoMiner, StepCloudProbe:
			sev = SeverityCritical
		case StepRawIPDownload, StepBase64Exec, StepConnection, StepExecFetched, StepPipeToShell:
			if sev != SeverityCritical && sf.Verified == "" {
				sev = SeverityHigh
			}
		}
		switch sf.Kind {
		case StepRawIPDownload, StepUntrustedDownload, StepChmodFetched, StepExecFetched:
			onlyVerified = onlyVerified && sf.Verified != ""
		default:
			onlyVerified = false
		}
	}
	step := shorten.Text(r.Step, maxQuotedStep)
	ev := map[string]any{"step": step, "kinds": kinds, "platforms": []string{}}
	where := "run command"
	if r.Index == ConfigStep {
		ev["source"] = "config"
	} else {
		ev["stepIndex"] = r.Index
		where = fmt.Sprintf("build step %d", r.Index)
	}
	if len(hosts) > 0 {
		ev["hosts"] = hosts
	}
	if len(urls) > 0 {
		ev["urls"] = urls
	}
	if len(verified) > 0 {
		ev["verified"] = verified
	}
	if len(fetchedIn) > 0 {
		sort.Ints(fetchedIn)
		ev["fetchedIn"] = fetchedIn
	}
	if r.Index >= 0 && r.Index < len(pl.History) {
		if c := pl.History[r.Index].Created; !c.IsZero() && c.Unix() > 0 {
			ev["created"] = c.UTC().Format(time.RFC3339)
		}
	}
	if pl.Platform != "" {
		ev["platforms"] = []string{pl.Platform}
	}
	details := make([]string, 0, len(r.Findings))
	for _, sf := range r.Findings {
		details = appendUnique(details, sf.Detail)
	}
	f := p.finding(RuleSuspiciousBuildStep, sev, fmt.Sprintf("%s %s: %q", where, strings.Join(details, "; "), step), ev)
	if onlyVerified && p.verifiedAction != "" && p.verifiedAction.rank() < f.Action.rank() {
		f.Action = p.verifiedAction
	}
	return f
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func appendUnique(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }

// runtimeSockets are the sockets through which a container can build or
// run images on its node.
var runtimeSockets = []string{
	"/var/run/docker.sock", "/run/docker.sock",
	"/run/containerd/containerd.sock", "/var/run/containerd/containerd.sock",
	"/run/k3s/containerd/containerd.sock",
	"/run/crio/crio.sock", "/var/run/crio/crio.sock",
	"/run/buildkit/buildkitd.sock", "/var/run/buildkit/buildkitd.sock",
	"/run/podman/podman.sock", "/var/run/podman/podman.sock",
}

var socketNames = []string{"docker.sock", "containerd.sock", "crio.sock", "buildkitd.sock", "podman.sock"}

// socketFindings flags mounts of hostPath volumes that are a runtime
// socket, or a directory holding one.
func (p *Policy) socketFindings(c Container, hostPaths map[string]string) []Finding {
	var out []Finding
	for _, m := range c.Mounts {
		hp, ok := hostPaths[m.Volume]
		if !ok {
			continue
		}
		eff := path.Clean("/" + hp)
		if m.SubPath != "" {
			eff = path.Join(eff, m.SubPath)
		}
		sock := exposedSocket(eff)
		if sock == "" {
			continue
		}
		msg := fmt.Sprintf("%s %s mounts host path %s", c.Kind, c.Name, eff)
		if sock != eff {
			msg += ", which holds the runtime socket " + sock
		} else {
			msg += ", a container runtime socket"
		}
		msg += ": the means to build and run images on the node"
		out = append(out, p.finding(RuleRuntimeSocketMount, SeverityHigh, msg,
			map[string]any{"volume": m.Volume, "hostPath": hp, "socket": sock}))
	}
	return out
}

func exposedSocket(hostPath string) string {
	for _, n := range socketNames {
		if path.Base(hostPath) == n {
			return hostPath
		}
	}
	for _, s := range runtimeSockets {
		if hostPath == "/" || strings.HasPrefix(s, hostPath+"/") {
			return s
		}
	}
	return ""
}

// exceptionFor returns the first live exception matching ref (or the
// digest it resolved to).
func exceptionFor(es []exception, ref name.Reference, digest string, now time.Time) (ExceptionUse, bool) {
	if len(es) == 0 {
		return ExceptionUse{}, false // most policies have none: spare the repository's name
	}
	repo := ref.Context().Name()
	if d, ok := ref.(name.Digest); ok && digest == "" {
		digest = d.DigestStr()
	}
	for _, e := range es {
		if !now.Before(e.expires) {
			continue
		}
		matched := false
		for _, d := range e.digests {
			if d.repo == repo && d.digest == digest && digest != "" {
				matched = true
			}
		}
		if _, ok := matchAny(e.globs, repo); ok {
			matched = true
		}
		if matched {
			return ExceptionUse{Name: e.name, Reason: e.reason, Expires: e.expires, ApprovedBy: e.approvedBy}, true
		}
	}
	return ExceptionUse{}, false
}
