package ingest

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/records"
)

// DefaultRetroWorkloads bounds how many admitted workloads Retro
// remembers.
const DefaultRetroWorkloads = 20000

// Evaluator judges a workload. *engine.Engine is one.
type Evaluator interface {
	Evaluate(ctx context.Context, w engine.Workload) (policy.Verdict, error)
}

// EventSink posts a Kubernetes Event about a workload.
type EventSink interface {
	Event(w engine.Workload, reason, message string)
}

// Retro keeps detection going after admission: it remembers which
// admitted workloads run which images (by config, manifest and index
// digest, the keys build reports use) and, for each, the windows in
// which its images' builds' nodes' connections count
// (policy.ImageVerdict.Watch). When a node reports later a build of one
// of those images, or a connection inside one of those windows, it
// judges the workload again with the new evidence, as of its admission.
// A finding it did not have at admission — host-built, untrusted-egress,
// or implausible-build-time — is logged, counted in
// buildguard_retroactive_findings_total, recorded, and posted as a
// Warning Event on the workload.
type Retro struct {
	Evaluator Evaluator
	// Events posts Events; nil posts none.
	Events EventSink
	// Record keeps a decision record of each late judgement that found
	// something new (records.Recorder.Record), so the denial list shows
	// it beside the admission decisions; nil keeps none.
	Record func(evidence.Decision)
	// Now is the clock of those records, and of the admissions Admitted
	// is told of. The default is time.Now.
	Now func() time.Time
	// Max bounds the remembered workloads. The default is
	// DefaultRetroWorkloads.
	Max int
	Log *slog.Logger

	mu      sync.Mutex
	ll      *list.List                 // of *admitted, most recent first
	byKey   map[string]*list.Element   // namespace/kind/name →
	byImage map[string]map[string]bool // digest → keys
	byNode  map[string]map[string]bool // node of a watch window → keys
	found   *prometheus.CounterVec
}

type admitted struct {
	key     string
	uid     string // the admission request's, when known
	w       engine.Workload
	digests []string
	watch   []policy.ConnectionWindow
	rules   map[string]bool // rule IDs already found at admission
	// judging is set while a judgement of the workload is under way;
	// again when evidence came meanwhile, which that judgement may have
	// missed: it runs once more. A node streaming connections during a
	// build window costs one judgement at a time, not one per report.
	judging, again bool
}

// maxWatch bounds the connection windows remembered per workload: a
// workload of many images each built many times is judged again for a
// connection in the first ones.
const maxWatch = 64

// lateRules are the rules a late judgement reports.
var lateRules = map[policy.RuleID]bool{policy.RuleHostBuilt: true, policy.RuleUntrustedEgress: true, policy.RuleImplausibleBuildTime: true}

// NewRetro returns a Retro registering its metric on reg.
func NewRetro(ev Evaluator, events EventSink, reg prometheus.Registerer, log *slog.Logger) *Retro {
	r := &Retro{Evaluator: ev, Events: events, Log: log,
		found: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "buildguard_retroactive_findings_total",
			Help: "Findings raised after admission, when node evidence arrived late, by rule and namespace.",
		}, []string{"rule", "namespace"}),
	}
	if reg != nil {
		reg.MustRegister(r.found)
	}
	return r
}

func (r *Retro) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}

// Admitted remembers an admitted workload, the digests of its images and
// the windows of their builds' connections. Workloads a controller owns
// are remembered through their owner. uid is the admission request's UID:
// late findings are recorded under it, with a suffix. The admission time
// is taken to be now (Retro.Now) unless w.At says otherwise.
func (r *Retro) Admitted(uid string, w engine.Workload, v policy.Verdict) {
	if !v.Allowed || w.Controlled || w.Spec == nil {
		return
	}
	if w.At.IsZero() {
		w.At = r.now()
	}
	a := &admitted{key: w.Namespace + "/" + w.Kind + "/" + w.Name, uid: uid, w: w, rules: map[string]bool{}}
	for _, iv := range v.Images {
		a.digests = append(a.digests, iv.ConfigDigests...)
		if iv.Digest != "" {
			a.digests = append(a.digests, iv.Digest)
		}
		for _, f := range iv.Findings {
			a.rules[string(f.Rule)] = true
		}
	}
	if len(a.digests) == 0 {
		return
	}
	max := r.Max
	if max <= 0 {
		max = DefaultRetroWorkloads
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ll == nil {
		r.ll, r.byKey, r.byImage, r.byNode = list.New(), map[string]*list.Element{}, map[string]map[string]bool{}, map[string]map[string]bool{}
	}
	if e, ok := r.byKey[a.key]; ok {
		r.forget(e)
	}
	r.byKey[a.key] = r.ll.PushFront(a)
	for _, d := range a.digests {
		if r.byImage[d] == nil {
			r.byImage[d] = map[string]bool{}
		}
		r.byImage[d][a.key] = true
	}
	r.setWatch(a, v)
	for r.ll.Len() > max {
		r.forget(r.ll.Back())
	}
}

// setWatch makes a's connection windows those of verdict v; r.mu is held.
func (r *Retro) setWatch(a *admitted, v policy.Verdict) {
	r.unwatch(a)
	a.watch = nil
	for _, iv := range v.Images {
		for _, w := range iv.Watch {
			if len(a.watch) < maxWatch && !slices.Contains(a.watch, w) {
				a.watch = append(a.watch, w)
			}
		}
	}
	for _, w := range a.watch {
		if r.byNode[w.Node] == nil {
			r.byNode[w.Node] = map[string]bool{}
		}
		r.byNode[w.Node][a.key] = true
	}
}

// unwatch drops a from the node index; r.mu is held.
func (r *Retro) unwatch(a *admitted) {
	for _, w := range a.watch {
		delete(r.byNode[w.Node], a.key)
		if len(r.byNode[w.Node]) == 0 {
			delete(r.byNode, w.Node)
		}
	}
}

func (r *Retro) forget(e *list.Element) {
	a := e.Value.(*admitted)
	r.ll.Remove(e)
	delete(r.byKey, a.key)
	for _, d := range a.digests {
		delete(r.byImage[d], a.key)
		if len(r.byImage[d]) == 0 {
			delete(r.byImage, d)
		}
	}
	r.unwatch(a)
}

// Report judges again the workloads that a stored report may change the
// verdict of: those running an image it says was built, and those with
// a build whose connection window (its node, its span and the build
// window around it) holds one of its connections. It runs in the
// background of the report's request.
func (r *Retro) Report(ctx context.Context, rep evidence.Report) {
	var todo []*admitted
	r.mu.Lock()
	seen := map[string]bool{}
	add := func(key string) {
		if !seen[key] {
			seen[key] = true
			todo = append(todo, r.byKey[key].Value.(*admitted))
		}
	}
	for _, b := range rep.Builds {
		for key := range r.byImage[b.ImageID] {
			add(key)
		}
	}
	// The connections' times by node, sorted: each window of a workload
	// on that node is then one binary search.
	times := map[string][]time.Time{}
	for _, c := range rep.Connections {
		if len(r.byNode[c.Node]) > 0 {
			times[c.Node] = append(times[c.Node], c.Time)
		}
	}
	for node, ts := range times {
		slices.SortFunc(ts, func(a, b time.Time) int { return a.Compare(b) })
		for key := range r.byNode[node] {
			if seen[key] {
				continue
			}
			for _, w := range r.byKey[key].Value.(*admitted).watch {
				if w.Node != node {
					continue
				}
				i, _ := slices.BinarySearchFunc(ts, w.From, func(t, from time.Time) int { return t.Compare(from) })
				if i < len(ts) && w.Contains(node, ts[i]) {
					add(key)
					break
				}
			}
		}
	}
	run := todo[:0]
	for _, a := range todo {
		if a.judging {
			a.again = true
			continue
		}
		a.judging = true
		run = append(run, a)
	}
	r.mu.Unlock()
	if len(run) == 0 {
		return
	}
	go func() {
		for _, a := range run {
			for {
				ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				r.judge(ctx, a)
				cancel()
				r.mu.Lock()
				again := a.again
				a.again, a.judging = false, again
				r.mu.Unlock()
				if !again {
					break
				}
			}
		}
	}()
}

func (r *Retro) judge(ctx context.Context, a *admitted) {
	w := a.w
	w.Operation = "UPDATE" // a re-judgement, not a new change
	w.OldSpec = w.Spec
	v, err := r.Evaluator.Evaluate(ctx, w)
	if err != nil {
		r.log().Warn("late evidence not judged", "namespace", w.Namespace, "kind", w.Kind, "name", w.Name, "error", err)
		return
	}
	// A late build brings a window of its own for later connections.
	r.mu.Lock()
	if e, ok := r.byKey[a.key]; ok && e.Value.(*admitted) == a {
		r.setWatch(a, v)
	}
	r.mu.Unlock()
	found := false
	for _, iv := range v.Images {
		for _, f := range iv.Findings {
			if !lateRules[f.Rule] {
				continue
			}
			if f.Action == policy.ActionIgnore || !r.firstTime(a, f.Rule) {
				continue
			}
			found = true
			r.found.WithLabelValues(string(f.Rule), w.Namespace).Inc()
			r.log().Warn("late evidence: finding after admission", "namespace", w.Namespace, "kind", w.Kind, "name", w.Name,
				"image", iv.Image, "digest", iv.Digest, "rule", string(f.Rule), "verdict", string(f.Action), "message", f.Message)
			if r.Events != nil {
				r.Events.Event(w, "BuildguardLateEvidence", shortMessage(fmt.Sprintf("[%s] %s %s: %s (found after admission)", f.Rule, iv.Container, iv.Image, f.Message)))
			}
		}
	}
	if found && r.Record != nil {
		r.Record(r.lateDecision(a, v))
	}
}

// LateOperation is the Operation of the decision record of a late
// judgement: nothing was admitted or denied then.
const LateOperation = "LATE-EVIDENCE"

// lateDecision is the record of a late judgement of a: the admission
// decision's record with the verdict judged now. Its ID is the admission
// request's UID (or the workload's key) followed by "/late-" and the time,
// and a deny is a would-deny: the workload was admitted.
func (r *Retro) lateDecision(a *admitted, v policy.Verdict) evidence.Decision {
	t := r.now().UTC()
	id := a.uid
	if id == "" {
		id = a.key
	}
	req := &admissionv1.AdmissionRequest{
		UID:       types.UID(fmt.Sprintf("%s/late-%d", id, t.UnixMicro())),
		Operation: admissionv1.Operation(LateOperation),
		Namespace: a.w.Namespace,
		Name:      a.w.Name,
		Kind:      metav1.GroupVersionKind{Kind: a.w.Kind},
		UserInfo:  authnv1.UserInfo{Username: "buildguard-late-evidence"},
	}
	v.Allowed = true // admitted already: a deny now is a would-deny
	return records.Decision(req, a.w, v, t)
}

func (r *Retro) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// shortMessage keeps an Event message within what the API server stores
// comfortably.
func shortMessage(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 1000 {
		s = s[:997] + "..."
	}
	return s
}

// firstTime reports whether rule is new for a, and records it; reports
// judged at once share a.
func (r *Retro) firstTime(a *admitted, rule policy.RuleID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.rules[string(rule)] {
		return false
	}
	a.rules[string(rule)] = true
	return true
}

// Found is the counter of retroactive findings, for tests and wiring.
func (r *Retro) Found() *prometheus.CounterVec { return r.found }
