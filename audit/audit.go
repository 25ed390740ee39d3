// Package audit judges the workloads already in a cluster against current
// policy — what was admitted before buildguard was installed, before a
// policy changed, or in audit mode — and records each verdict as a
// decision. A scan blocks nothing: a deny is recorded as "would-deny".
//
// Each top-level workload is judged once: a Deployment, not its
// ReplicaSets and Pods as well. Evaluations share the engine's caches, so
// a scan costs about one registry lookup per distinct image, however many
// Pods run it. `buildguard audit` runs one Scanner; `buildguard serve`
// runs one every interval (Schedule), claimed by one replica (Claim).
package audit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/records"
)

// Defaults of a Scanner.
const (
	DefaultConcurrency = 8
	DefaultPageSize    = 500
)

// What scan records carry in place of an admission request's operation
// and user.
const (
	Operation = decision.OperationScan
	User      = "buildguard-audit"
)

// Evaluator judges a workload. *engine.Engine is one.
type Evaluator interface {
	Evaluate(ctx context.Context, w engine.Workload) (policy.Verdict, error)
}

// Recorder keeps decision records. evidence.Store is one; the server
// hands them to its records.Recorder instead, which never loses them
// while the store is down.
type Recorder interface {
	AddDecision(ctx context.Context, d evidence.Decision) error
}

// Scanner judges every workload in a cluster: Pods, Deployments,
// ReplicaSets, StatefulSets, DaemonSets, Jobs, CronJobs and
// ReplicationControllers. Client and Evaluator are required.
//
// An object a controller owns is skipped when its owner is scanned too
// and runs the same containers (the Pods of a ReplicaSet, the ReplicaSet
// of a Deployment, the Jobs of a CronJob): the owner's verdict is its
// verdict. It is judged on its own when what it runs differs from its
// owner — an old ReplicaSet still running during a rollout, a Pod with an
// ephemeral debug container or an injected sidecar — unless it runs
// nothing (an old ReplicaSet scaled to zero, a finished Job); of siblings
// that differ from their owner alike, only the first is judged. Objects
// whose owner is not a scanned kind, and bare Pods, are judged on their
// own.
type Scanner struct {
	// Client lists the workloads.
	Client kubernetes.Interface
	// Evaluator judges them; an *engine.Engine shared by all evaluations
	// of a scan, and by scans, shares its caches.
	Evaluator Evaluator
	// Recorder stores a decision per judged workload. When nil, nothing
	// is recorded.
	Recorder Recorder
	// Namespaces limits the scan to these namespaces. The default is all.
	Namespaces []string
	// ExcludeNamespaces are namespaces not judged (the webhook's own
	// exclusions, say: kube-system). The default is none.
	ExcludeNamespaces []string
	// Policies and NamespaceLabels, when both are set, are the policies
	// and namespace labels the Evaluator judges with (an *engine.Engine's
	// Policies and Namespaces). An owned object is then covered by its
	// owner only if its own labels select the same policies as its
	// owner's: a policy's objectSelector may pick a Pod and not the
	// Deployment that made it. Without them, labels are not compared.
	Policies        engine.Policies
	NamespaceLabels engine.Namespaces
	// Concurrency is how many workloads are judged at once. The default
	// is DefaultConcurrency.
	Concurrency int
	// PageSize is the Limit of each list call. The default is
	// DefaultPageSize.
	PageSize int64
	// ID names the scan; its records' IDs end with it, and the store keeps
	// one record per ID. The default is ScanID of the time the scan
	// starts. Replicas that scan on the same schedule give their scans the
	// same ID, so they record each verdict once.
	ID string
	// Clock tells the time of the scan and its records. The default, nil,
	// is the real clock.
	Clock clock.Clock
	// Log receives what could not be judged or recorded. The default
	// discards.
	Log *slog.Logger
	// Progress, when set, is called as objects are listed and as each
	// workload is judged, from the goroutine that called Scan.
	Progress func(Progress)
}

// Progress is how far a scan is.
type Progress struct {
	// Listed is the objects listed so far.
	Listed int
	// Total is the workloads to judge; 0 while listing.
	Total int
	// Done is the workloads judged so far.
	Done int
	// WouldDeny and Errors count the judged workloads so far that would be
	// denied and that could not be judged.
	WouldDeny, Errors int
}

// ScanID names a scan started at t; it is the suffix of its records' IDs
// ("<object UID>/scan-20261202T031500Z").
func ScanID(t time.Time) string { return "scan-" + t.UTC().Format("20060102T150405Z") }

// verdictWord is a scan's verdict: a deny is a would-deny, since nothing
// was blocked.
func verdictWord(v policy.Verdict) string {
	if v.Outcome == policy.OutcomeDeny {
		return policy.WouldDeny
	}
	return v.Word()
}

// Scan lists the workloads, judges them and records the verdicts. It
// returns an error, and no report, when listing fails; when ctx ends
// while judging, it returns what was judged with ctx's error. A workload
// that cannot be judged or recorded is counted in the report, not
// returned as an error.
func (s *Scanner) Scan(ctx context.Context) (*Report, error) {
	if s.Client == nil || s.Evaluator == nil {
		return nil, errors.New("audit: Scanner needs a Client and an Evaluator")
	}
	now := clock.OrReal(s.Clock).Now
	log := logger.OrDiscard(s.Log)
	pageSize := s.PageSize
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	workers := s.Concurrency
	if workers <= 0 {
		workers = DefaultConcurrency
	}
	progress := func(Progress) {}
	if s.Progress != nil {
		progress = s.Progress
	}
	started := now()
	id := s.ID
	if id == "" {
		id = ScanID(started)
	}
	r := newReport(id, started, s.Namespaces)

	// List everything first: whether an object is judged depends on its
	// owner, which may be listed after it.
	var items []item
	var p Progress
	namespaces := slices.Compact(slices.Sorted(slices.Values(s.Namespaces)))
	if len(namespaces) == 0 || slices.Contains(namespaces, "") {
		namespaces = []string{""} // all of them
	}
	for _, ns := range namespaces {
		for _, l := range listers() {
			got, err := listKind(ctx, s.Client, l, ns, pageSize, func(n int) {
				p.Listed += n
				progress(p)
			})
			if err != nil {
				return nil, err
			}
			for _, it := range got {
				if slices.Contains(s.ExcludeNamespaces, it.namespace) {
					r.Excluded++
					continue
				}
				items = append(items, it)
			}
		}
	}
	r.Listed = len(items) + r.Excluded
	todo := selectWorkloads(items, r, s.selectionKeys(ctx))
	p.Total = len(todo)
	progress(p)

	jobs := make(chan *item)
	results := make(chan Result)
	var wg sync.WaitGroup
	for range min(workers, max(1, len(todo))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range jobs {
				results <- s.judge(ctx, log, r.ID, now, it)
			}
		}()
	}
	go func() {
		defer close(jobs)
		for _, it := range todo {
			select {
			case jobs <- it:
			case <-ctx.Done():
				return
			}
		}
	}()
	go func() {
		wg.Wait()
		close(results)
	}()
	for res := range results {
		r.add(res)
		p.Done++
		if res.Verdict == policy.WouldDeny {
			p.WouldDeny++
		}
		if res.failed() {
			p.Errors++
		}
		progress(p)
	}
	r.finish(now())
	if err := ctx.Err(); err != nil {
		return r, fmt.Errorf("scan %s stopped after %d of %d workloads: %w", r.ID, p.Done, p.Total, err)
	}
	return r, nil
}

// selectionKeys returns a function naming the policies that govern an
// item: items with the same key are judged under the same policies. An
// item whose policies cannot be told has a key of its own. Without
// Policies and NamespaceLabels, every item has the same key.
func (s *Scanner) selectionKeys(ctx context.Context) func(*item) string {
	if s.Policies == nil || s.NamespaceLabels == nil {
		return func(*item) string { return "" }
	}
	type nsLabels struct {
		labels map[string]string
		err    error
	}
	namespaces := map[string]nsLabels{}
	keys := map[string]string{} // namespace and labels → key
	return func(it *item) string {
		own := "unknown\x00" + string(it.uid)
		ns, ok := namespaces[it.namespace]
		if !ok {
			ns.labels, ns.err = s.NamespaceLabels.Labels(ctx, it.namespace)
			namespaces[it.namespace] = ns
		}
		if ns.err != nil {
			return own
		}
		var b strings.Builder
		b.WriteString(it.namespace)
		for _, k := range slices.Sorted(maps.Keys(it.labels)) {
			fmt.Fprintf(&b, "\x00%s=%s", k, it.labels[k])
		}
		if k, ok := keys[b.String()]; ok {
			return k
		}
		sel, err := s.Policies.Select(it.namespace, ns.labels, it.labels)
		if err != nil {
			return own
		}
		var k strings.Builder
		for _, p := range sel.Policies {
			fmt.Fprintf(&k, "%p,", p)
		}
		keys[b.String()] = k.String()
		return k.String()
	}
}

// selectWorkloads returns the items to judge, counting the others in r.
// key names the policies that govern an item (selectionKeys).
func selectWorkloads(items []item, r *Report, key func(*item) string) []*item {
	byUID := make(map[types.UID]*item, len(items))
	for i := range items {
		byUID[items[i].uid] = &items[i]
	}
	// judged[uid] says whether an object's containers are judged, at the
	// object itself or at an owner running the same ones.
	judged := make(map[types.UID]bool, len(items))
	visiting := map[types.UID]bool{}
	// sameAs: the owner's verdict is it's, as it runs the same under the
	// same policies.
	sameAs := func(owner, it *item) bool {
		return owner.signature() == it.signature() && key(owner) == key(it)
	}
	var covered func(it *item) bool
	covered = func(it *item) bool {
		if j, ok := judged[it.uid]; ok {
			return j
		}
		owner := byUID[it.owner]
		if owner == nil {
			judged[it.uid] = true // not owned by a scanned object: judged on its own
			return true
		}
		if visiting[it.uid] {
			return false // an ownership cycle, which only broken objects form
		}
		visiting[it.uid] = true
		j := (sameAs(owner, it) && covered(owner)) || it.active
		delete(visiting, it.uid)
		judged[it.uid] = j
		return j
	}
	// Siblings that run the same as each other but not as their owner
	// (the Pods of a ReplicaSet into which a mutating webhook injected a
	// sidecar) are judged once, by the first of them.
	type sibling struct {
		owner    types.UID
		sig, key string
	}
	siblings := map[sibling]bool{}
	var out []*item
	for i := range items {
		it := &items[i]
		owner := byUID[it.owner]
		switch {
		case owner == nil:
			out = append(out, it)
		case sameAs(owner, it) && covered(owner):
			r.Covered++
		case !it.active:
			r.Inactive++
		case siblings[sibling{it.owner, it.signature(), key(it)}]:
			r.Covered++
		default:
			siblings[sibling{it.owner, it.signature(), key(it)}] = true
			out = append(out, it)
		}
	}
	return out
}

// judge evaluates one workload and records the verdict.
func (s *Scanner) judge(ctx context.Context, log *slog.Logger, scanID string, now func() time.Time, it *item) Result {
	res := Result{Kind: it.kind, Namespace: it.namespace, Name: it.name, UID: string(it.uid), Images: it.images()}
	// A scan changes nothing: the object is judged as an UPDATE that
	// keeps its images, so change control (which judges changes, at the
	// time they are made) finds nothing to say about what already runs.
	w := engine.Workload{
		Namespace: it.namespace, Kind: it.kind, Name: it.name, Labels: it.labels, Spec: it.spec,
		Operation: "UPDATE", OldSpec: it.spec,
	}
	if err := ctx.Err(); err != nil {
		res.Error = err.Error()
		return res
	}
	v, err := s.Evaluator.Evaluate(ctx, w)
	if err == nil && ctx.Err() != nil {
		// Lookups cut short by the end of the scan are no verdict.
		err = ctx.Err()
	}
	if err != nil {
		res.Error = err.Error()
		log.Warn("audit: workload not judged", "namespace", it.namespace, "kind", it.kind, "name", it.name, "uid", string(it.uid), "error", err)
		return res
	}
	res.setVerdict(v)
	if s.Recorder == nil {
		return res
	}
	d := Decision(scanID, it.uid, w, v, now())
	if err := s.Recorder.AddDecision(ctx, d); err != nil {
		res.RecordError = err.Error()
		log.Warn("audit: decision not recorded", "namespace", it.namespace, "kind", it.kind, "name", it.name, "uid", string(it.uid), "error", err)
		return res
	}
	res.Decision = d.ID
	return res
}

// Decision is the record of a scan's verdict on the object uid, at time
// t: a decision record as the webhook's (records.FromDecision), with ID
// "<uid>/<scanID>", Operation "SCAN", User "buildguard-audit", and
// "would-deny" for a deny.
func Decision(scanID string, uid types.UID, w engine.Workload, v policy.Verdict, t time.Time) evidence.Decision {
	return records.FromDecision(decision.Decision{
		ID:        string(uid) + "/" + scanID,
		Source:    decision.Scan,
		Operation: Operation,
		User:      User,
		Workload:  w,
		Verdict:   v,
		Time:      t,
	})
}
