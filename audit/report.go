package audit

import (
	"slices"
	"strings"
	"time"

	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/policy"
)

// Report is what a scan found; docs/audit.md describes its JSON.
type Report struct {
	// ID names the scan (ScanID); records' IDs end with it.
	ID       string    `json:"id"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Namespaces is the scan's namespace filter; empty for all.
	Namespaces []string `json:"namespaces,omitempty"`
	// Listed is the objects listed, of every kind.
	Listed int `json:"listed"`
	// Excluded is the objects listed in excluded namespaces.
	Excluded int `json:"excluded"`
	// Covered is the objects not judged on their own because an owner
	// running the same containers was, or a sibling running the same as
	// they do.
	Covered int `json:"covered"`
	// Inactive is the owned objects not judged because they run something
	// other than their owner but nothing now (an old ReplicaSet scaled to
	// zero, a finished Job).
	Inactive int `json:"inactive"`
	// Totals counts the judged workloads.
	Totals Counts `json:"totals"`
	// ByNamespace and ByRule summarise them, in name order.
	ByNamespace []NamespaceSummary `json:"byNamespace"`
	ByRule      []RuleSummary      `json:"byRule"`
	// Workloads are the judged workloads, by namespace, kind and name.
	Workloads []Result `json:"workloads"`

	nsImages   map[string]map[string]bool
	ruleImages map[string]map[string]bool
	images     map[string]bool
}

// Counts count judged workloads. A workload counts once in Allow, Warn or
// WouldDeny, or in Errors alone when it could not be judged; one whose
// images could not be looked up (registry-unavailable) is counted in
// Errors as well as under the verdict the policy's failurePolicy gave.
type Counts struct {
	Workloads int `json:"workloads"`
	// Images is the distinct image references they run.
	Images    int `json:"images"`
	Allow     int `json:"allow"`
	Warn      int `json:"warn"`
	WouldDeny int `json:"wouldDeny"`
	Errors    int `json:"errors"`
	// NotRecorded is the verdicts the recorder refused.
	NotRecorded int `json:"notRecorded"`
}

// NamespaceSummary counts one namespace's judged workloads.
type NamespaceSummary struct {
	Namespace string `json:"namespace"`
	Counts
}

// RuleSummary counts the judged workloads on which a rule found something.
type RuleSummary struct {
	Rule string `json:"rule"`
	// Workloads is the workloads it found something on; WouldDeny of them
	// would be denied for it, Warn only warned.
	Workloads int `json:"workloads"`
	WouldDeny int `json:"wouldDeny"`
	Warn      int `json:"warn"`
	// Images is the distinct image references it found something on.
	Images int `json:"images"`
	// Namespaces is how many namespaces those workloads are in.
	Namespaces int `json:"namespaces"`

	namespaces map[string]bool
}

// Result is the verdict on one workload.
type Result struct {
	Kind      string   `json:"kind"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	UID       string   `json:"uid"`
	Images    []string `json:"images"`
	// Verdict is allow, warn or would-deny; empty when Error is set.
	Verdict string `json:"verdict,omitempty"`
	// Mode is the mode in force in the namespace.
	Mode string `json:"mode,omitempty"`
	// Rules are the rule IDs found (not ignored); DenyRules those that
	// would deny it.
	Rules     []string `json:"rules,omitempty"`
	DenyRules []string `json:"denyRules,omitempty"`
	// Findings are what the rules found, ignored findings aside, in pod
	// spec order and then the workload's own.
	Findings []Finding `json:"findings,omitempty"`
	// Decision is the ID of its decision record, when recorded.
	Decision string `json:"decision,omitempty"`
	// Error says why it could not be judged.
	Error string `json:"error,omitempty"`
	// RecordError says why its verdict could not be recorded.
	RecordError string `json:"recordError,omitempty"`

	// imageRules are the rules found per image reference.
	imageRules  map[string][]string
	unavailable bool
}

// Finding is what a rule found on a workload: on one of its images, or
// on the workload itself (Image empty).
type Finding struct {
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	// Action is deny or warn.
	Action string `json:"action"`
	// Denies is true when the finding denies the workload: a deny action
	// on an image no exception admitted.
	Denies        bool   `json:"denies"`
	Container     string `json:"container,omitempty"`
	ContainerKind string `json:"containerKind,omitempty"`
	Image         string `json:"image,omitempty"`
	Digest        string `json:"digest,omitempty"`
	// Message is the finding's sentence, at most maxMessage bytes.
	Message string `json:"message"`
	// Policy is the ClusterBuildPolicy that raised it; empty for a
	// policy file.
	Policy string `json:"policy,omitempty"`
	// Exception names the exception that admitted the image.
	Exception string `json:"exception,omitempty"`
}

// maxMessage bounds a finding's message in a report: a scan keeps the
// findings of every workload of a cluster.
const maxMessage = 512

// failed reports whether the workload could not be judged, or not on
// its images' merits.
func (r *Result) failed() bool { return r.Error != "" || r.unavailable }

func (r *Result) setVerdict(v policy.Verdict) {
	r.Verdict = verdictWord(v)
	r.Mode = string(v.Mode)
	r.Rules = v.RuleIDs(policy.ActionWarn)
	r.imageRules = map[string][]string{}
	for _, iv := range v.Images {
		for _, f := range iv.Findings {
			if f.Action == policy.ActionIgnore {
				continue
			}
			fd := Finding{Rule: string(f.Rule), Severity: string(f.Severity), Action: string(f.Action),
				Denies:    f.Action == policy.ActionDeny && iv.Outcome == policy.OutcomeDeny,
				Container: iv.Container, ContainerKind: string(iv.ContainerKind), Image: iv.Image, Digest: iv.Digest,
				Message: shorten.Text(f.Message, maxMessage), Policy: f.Policy}
			if iv.Exception != nil {
				fd.Exception = iv.Exception.Name
			}
			r.Findings = append(r.Findings, fd)
			if f.Rule == policy.RuleRegistryUnavailable {
				r.unavailable = true
			}
			if !slices.Contains(r.imageRules[iv.Image], string(f.Rule)) {
				r.imageRules[iv.Image] = append(r.imageRules[iv.Image], string(f.Rule))
			}
			// An image admitted by an exception denies nothing.
			if f.Action == policy.ActionDeny && iv.Outcome == policy.OutcomeDeny && !slices.Contains(r.DenyRules, string(f.Rule)) {
				r.DenyRules = append(r.DenyRules, string(f.Rule))
			}
		}
	}
	for _, f := range v.Findings {
		if f.Action == policy.ActionIgnore {
			continue
		}
		denies := f.Action == policy.ActionDeny && v.Outcome == policy.OutcomeDeny
		r.Findings = append(r.Findings, Finding{Rule: string(f.Rule), Severity: string(f.Severity), Action: string(f.Action),
			Denies: denies, Message: shorten.Text(f.Message, maxMessage), Policy: f.Policy})
		if denies && !slices.Contains(r.DenyRules, string(f.Rule)) {
			r.DenyRules = append(r.DenyRules, string(f.Rule))
		}
	}
	slices.Sort(r.DenyRules)
}

func newReport(id string, started time.Time, namespaces []string) *Report {
	return &Report{
		ID: id, Started: started.UTC(), Namespaces: namespaces,
		ByNamespace: []NamespaceSummary{}, ByRule: []RuleSummary{}, Workloads: []Result{},
		nsImages: map[string]map[string]bool{}, ruleImages: map[string]map[string]bool{}, images: map[string]bool{},
	}
}

func (c *Counts) add(res *Result) {
	c.Workloads++
	switch {
	case res.Error != "":
	case res.Verdict == policy.WouldDeny:
		c.WouldDeny++
	case res.Verdict == string(policy.OutcomeWarn):
		c.Warn++
	default:
		c.Allow++
	}
	if res.failed() {
		c.Errors++
	}
	if res.RecordError != "" {
		c.NotRecorded++
	}
}

// add counts a judged workload.
func (r *Report) add(res Result) {
	r.Workloads = append(r.Workloads, res)
	r.Totals.add(&res)
	i, found := slices.BinarySearchFunc(r.ByNamespace, res.Namespace, func(s NamespaceSummary, ns string) int { return strings.Compare(s.Namespace, ns) })
	if !found {
		r.ByNamespace = slices.Insert(r.ByNamespace, i, NamespaceSummary{Namespace: res.Namespace})
		r.nsImages[res.Namespace] = map[string]bool{}
	}
	ns := &r.ByNamespace[i]
	ns.add(&res)
	for _, img := range res.Images {
		r.images[img] = true
		r.nsImages[res.Namespace][img] = true
	}
	ns.Images = len(r.nsImages[res.Namespace])
	r.Totals.Images = len(r.images)
	for _, rule := range res.Rules {
		i, found := slices.BinarySearchFunc(r.ByRule, rule, func(s RuleSummary, id string) int { return strings.Compare(s.Rule, id) })
		if !found {
			r.ByRule = slices.Insert(r.ByRule, i, RuleSummary{Rule: rule, namespaces: map[string]bool{}})
			r.ruleImages[rule] = map[string]bool{}
		}
		rs := &r.ByRule[i]
		rs.Workloads++
		if slices.Contains(res.DenyRules, rule) {
			rs.WouldDeny++
		} else {
			rs.Warn++
		}
		rs.namespaces[res.Namespace] = true
		rs.Namespaces = len(rs.namespaces)
		for img, rules := range res.imageRules {
			if slices.Contains(rules, rule) {
				r.ruleImages[rule][img] = true
			}
		}
		rs.Images = len(r.ruleImages[rule])
	}
}

// finish sorts the workloads and stamps the end time.
func (r *Report) finish(t time.Time) {
	r.Finished = t.UTC()
	slices.SortFunc(r.Workloads, func(a, b Result) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		if c := strings.Compare(a.Kind, b.Kind); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
}
