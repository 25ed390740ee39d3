// Package policyreport writes what audit scans find as policy reports,
// the objects that Policy Reporter and other dashboards read and that
// Kyverno, Kubewarden and Falco (through falcosidekick) write too:
// OpenReports' Report and ClusterReport (openreports.io/v1alpha1, the
// successor of the policy working group's API), or the working group's
// PolicyReport and ClusterPolicyReport (wgpolicyk8s.io/v1alpha2) for
// consumers that predate OpenReports.
//
// One report per namespace holds a result per workload and rule that
// found something; a workload that passes, or is gone, has none. Findings
// about a namespace itself (its buildguard.dev/mode label) go to one
// cluster-scoped report. Reports are bounded: at most MaxResults results
// each, the most serious first; the summary counts them all.
//
// The CRDs are not buildguard's to install: Writer detects whether the
// API server serves them and says so in the log once.
package policyreport

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/webhook"
)

// API is a policy report API.
type API string

const (
	// OpenReports is openreports.io/v1alpha1 Report and ClusterReport.
	OpenReports API = "openreports"
	// WGPolicy is wgpolicyk8s.io/v1alpha2 PolicyReport and
	// ClusterPolicyReport.
	WGPolicy API = "wgpolicyk8s"
)

// ParseAPI parses the name of an API: "openreports" or "wgpolicyk8s".
func ParseAPI(s string) (API, error) {
	switch API(s) {
	case OpenReports, WGPolicy:
		return API(s), nil
	}
	return "", fmt.Errorf("policy report API %q: want openreports or wgpolicyk8s", s)
}

// Resources are the namespaced and the cluster-scoped report resources
// of an API.
func (a API) Resources() (namespaced, cluster schema.GroupVersionResource) {
	if a == WGPolicy {
		gv := schema.GroupVersion{Group: "wgpolicyk8s.io", Version: "v1alpha2"}
		return gv.WithResource("policyreports"), gv.WithResource("clusterpolicyreports")
	}
	gv := schema.GroupVersion{Group: "openreports.io", Version: "v1alpha1"}
	return gv.WithResource("reports"), gv.WithResource("clusterreports")
}

func (a API) kinds() (namespaced, cluster string) {
	if a == WGPolicy {
		return "PolicyReport", "ClusterPolicyReport"
	}
	return "Report", "ClusterReport"
}

// Names and labels of buildguard's reports.
const (
	// Name is the name of buildguard's report in each namespace, and of
	// its cluster-scoped report.
	Name = "buildguard"
	// Source is the source results name.
	Source = "buildguard"
	// ManagedByLabel marks buildguard's reports, as Kyverno marks its own.
	ManagedByLabel = "app.kubernetes.io/managed-by"
	// ScanAnnotation names the scan a report is of.
	ScanAnnotation = "buildguard.dev/scan"
	// OmittedAnnotation counts the results left out of a report for
	// MaxResults.
	OmittedAnnotation = "buildguard.dev/omitted-results"
	// DefaultMaxResults bounds the results of one report: each is about
	// 1 KiB, well within the API server's object size limit (1.5 MiB).
	DefaultMaxResults = 1000
)

// filePolicy names the policy of findings raised under a policy file,
// which has no name: a result needs one.
const filePolicy = "buildguard"

// category is every result's category: what buildguard guards against.
const category = "Supply chain: Build Image on Host (T1612)"

// result is one result, before it is written in an API's shape.
type result struct {
	policy, rule, status, severity, message string
	kind, namespace, name, uid              string
	properties                              map[string]string
	rank                                    int
}

// summary counts results by status.
type summary struct{ pass, fail, warn, err, skip int }

// report is the content of one report.
type report struct {
	namespace string // "" for the cluster-scoped report
	results   []result
	summary   summary
	omitted   int
}

// statusRank orders results, most serious first, for MaxResults.
var statusRank = map[string]int{"fail": 0, "error": 1, "warn": 2, "skip": 3}

var severityRank = map[string]int{"critical": 0, "high": 1, "medium": 2, "low": 3}

// build turns a scan's report into policy report contents: a report per
// namespace with something to say — results, or passing workloads — and
// one cluster-scoped report for findings about namespaces themselves.
func build(r *audit.Report, maxResults int) map[string]*report {
	out := map[string]*report{}
	get := func(ns string) *report {
		rep, ok := out[ns]
		if !ok {
			rep = &report{namespace: ns}
			out[ns] = rep
		}
		return rep
	}
	// Findings about namespaces, by namespace: the first workload found
	// each.
	nsFindings := map[string]audit.Finding{}
	for i := range r.Workloads {
		w := &r.Workloads[i]
		rep := get(w.Namespace)
		if w.Error != "" {
			rep.results = append(rep.results, result{policy: filePolicy, rule: "evaluation", status: "error",
				message: shorten.Text("not judged: "+w.Error, 512), kind: w.Kind, namespace: w.Namespace, name: w.Name, uid: w.UID,
				properties: map[string]string{"scan": r.ID}, rank: rank("error", "")})
			continue
		}
		// A result per workload, policy and rule: containers that trip
		// the same rule share it.
		type key struct{ policy, rule string }
		byKey := map[key]int{}
		passed := true
		for _, f := range w.Findings {
			if f.Rule == string(policy.RuleInvalidModeLabel) {
				if _, ok := nsFindings[w.Namespace]; !ok {
					nsFindings[w.Namespace] = f
				}
				continue
			}
			status := statusOf(f)
			if status != "skip" {
				passed = false
			}
			pol := cmp.Or(f.Policy, filePolicy)
			k := key{pol, f.Rule}
			if j, ok := byKey[k]; ok {
				res := &rep.results[j]
				res.properties["containers"] += "," + f.Container
				if !slices.Contains(strings.Split(res.properties["images"], ","), f.Image) {
					res.properties["images"] += "," + f.Image
					if f.Digest != "" {
						res.properties["digests"] = strings.TrimPrefix(res.properties["digests"]+","+f.Digest, ",")
					}
				}
				if rk := rank(status, f.Severity); rk < res.rank {
					res.status, res.severity, res.message, res.rank = status, f.Severity, message(f), rk
				}
				continue
			}
			props := map[string]string{"action": f.Action, "mode": w.Mode, "scan": r.ID}
			if f.Container != "" {
				props["containers"], props["images"] = f.Container, f.Image
			}
			if f.Digest != "" {
				props["digests"] = f.Digest
			}
			if f.Exception != "" {
				props["exception"] = f.Exception
			}
			rep.results = append(rep.results, result{policy: pol, rule: f.Rule, status: status, severity: f.Severity, message: message(f),
				kind: w.Kind, namespace: w.Namespace, name: w.Name, uid: w.UID, properties: props, rank: rank(status, f.Severity)})
			byKey[k] = len(rep.results) - 1
		}
		if passed {
			rep.summary.pass++
		}
	}
	for _, ns := range slices.Sorted(maps.Keys(nsFindings)) {
		f := nsFindings[ns]
		status := statusOf(f)
		get("").results = append(get("").results, result{policy: cmp.Or(f.Policy, filePolicy), rule: f.Rule, status: status, severity: f.Severity,
			message: f.Message, kind: "Namespace", name: ns, properties: map[string]string{"action": f.Action, "scan": r.ID}, rank: rank(status, f.Severity)})
	}
	for _, rep := range out {
		for _, res := range rep.results {
			switch res.status {
			case "fail":
				rep.summary.fail++
			case "warn":
				rep.summary.warn++
			case "error":
				rep.summary.err++
			case "skip":
				rep.summary.skip++
			}
		}
		slices.SortStableFunc(rep.results, func(a, b result) int {
			return cmp.Or(cmp.Compare(a.rank, b.rank), cmp.Compare(a.kind, b.kind), cmp.Compare(a.name, b.name), cmp.Compare(a.rule, b.rule))
		})
		if len(rep.results) > maxResults {
			rep.omitted = len(rep.results) - maxResults
			rep.results = rep.results[:maxResults]
		}
	}
	return out
}

// statusOf is a finding's result: fail when it denies the workload, skip
// when an exception admitted its image, error when its registry could
// not be asked, warn otherwise (a warn action, or a deny in a workload
// that is not denied for it).
func statusOf(f audit.Finding) string {
	switch {
	case f.Rule == string(policy.RuleRegistryUnavailable):
		return "error"
	case f.Exception != "":
		return "skip"
	case f.Denies:
		return "fail"
	}
	return "warn"
}

// message is a finding's sentence, with the container it is about.
func message(f audit.Finding) string {
	if f.Container == "" {
		return f.Message
	}
	return fmt.Sprintf("%s %q: %s", f.ContainerKind, f.Container, f.Message)
}

func rank(status, severity string) int {
	s, ok := severityRank[severity]
	if !ok {
		s = 4
	}
	return statusRank[status]*10 + s
}

// apiVersionOf is the group/version of a workload kind.
func apiVersionOf(kind string) string {
	if kind == "Namespace" {
		return "v1"
	}
	for _, k := range webhook.Kinds() {
		if k.Kind == kind {
			return k.GroupVersion().String()
		}
	}
	return ""
}

// object renders a report as an object of api, named Name, of scan id at
// t.
func (rep *report) object(api API, id string, t time.Time, maxResults int) *unstructured.Unstructured {
	nsKind, clusterKind := api.kinds()
	nsRes, _ := api.Resources()
	kind := nsKind
	if rep.namespace == "" {
		kind = clusterKind
	}
	meta := map[string]any{
		"name":        Name,
		"labels":      map[string]any{ManagedByLabel: Source},
		"annotations": map[string]any{ScanAnnotation: id},
	}
	if rep.namespace != "" {
		meta["namespace"] = rep.namespace
	}
	if rep.omitted > 0 {
		meta["annotations"].(map[string]any)[OmittedAnnotation] = fmt.Sprint(rep.omitted)
	}
	results := make([]any, 0, len(rep.results))
	for _, res := range rep.results {
		ref := map[string]any{"apiVersion": apiVersionOf(res.kind), "kind": res.kind, "name": res.name}
		if res.namespace != "" {
			ref["namespace"] = res.namespace
		}
		if res.uid != "" {
			ref["uid"] = res.uid
		}
		props := map[string]any{}
		for k, v := range res.properties {
			props[k] = v
		}
		out := map[string]any{
			"policy":     res.policy,
			"rule":       res.rule,
			"result":     res.status,
			"message":    res.message,
			"category":   category,
			"scored":     true,
			"resources":  []any{ref},
			"timestamp":  map[string]any{"seconds": t.Unix(), "nanos": int64(0)},
			"properties": props,
		}
		if sev := severityFor(api, res.severity); sev != "" {
			out["severity"] = sev
		}
		// The v1alpha2 PolicyReport schema has no source per result (its
		// API server would prune it); OpenReports and ClusterPolicyReport
		// have one.
		if api == OpenReports || rep.namespace == "" {
			out["source"] = Source
		}
		results = append(results, out)
	}
	obj := map[string]any{
		"apiVersion": nsRes.GroupVersion().String(),
		"kind":       kind,
		"metadata":   meta,
		"summary": map[string]any{
			"pass": int64(rep.summary.pass), "fail": int64(rep.summary.fail), "warn": int64(rep.summary.warn),
			"error": int64(rep.summary.err), "skip": int64(rep.summary.skip),
		},
		"results": results,
	}
	if api == OpenReports {
		obj["source"] = Source
		obj["configuration"] = map[string]any{"limits": map[string]any{"maxResults": int64(maxResults)}}
	}
	return &unstructured.Unstructured{Object: obj}
}

// severityFor maps a finding's severity to the API's: wgpolicyk8s.io
// v1alpha2 knows only high, medium and low.
func severityFor(api API, s string) string {
	if api == WGPolicy && s == string(policy.SeverityCritical) {
		return string(policy.SeverityHigh)
	}
	return s
}
