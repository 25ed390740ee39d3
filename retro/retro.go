// Package retro keeps detection going after admission: it remembers the
// workloads the webhook admitted and judges them again when a node
// reports, later, a build of one of their images or a connection made
// while one was built, raising what that evidence finds as a metric, a
// decision record and a Warning Event.
package retro

import (
	"container/list"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/records"
)

// DefaultWorkloads bounds how many admitted workloads a Judge remembers.
const DefaultWorkloads = 20000

// Evaluator judges a workload. *engine.Engine is one.
type Evaluator interface {
	Evaluate(ctx context.Context, w engine.Workload) (policy.Verdict, error)
}

// EventSink posts a Kubernetes Event about a workload.
type EventSink interface {
	Event(w engine.Workload, reason, message string)
}

// Judge keeps detection going after admission: it remembers which
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
//
// The webhook tells it of admissions (Judge is a decision.Observer), and
// the node-report endpoint of every report it stored (Report).
type Judge struct {
	Evaluator Evaluator
	// Events posts Events; nil posts none.
	Events EventSink
	// Records is told of each late judgement that found something new, a
	// decision of source decision.LateEvidence (a records.Recorder keeps
	// it, so the denial list shows it beside the admission decisions);
	// nil keeps none.
	Records decision.Observer
	// Review, when set and Records keeps the late decisions, ends each
	// Event's message with a link to the late decision's page in the
	// review UI. The default links nothing.
	Review records.ReviewURL
	// Clock tells the time of those decisions, and of the admissions
	// Decided is told of without a time. The default, nil, is the real
	// clock.
	Clock clock.Clock
	// Max bounds the remembered workloads. The default is
	// DefaultWorkloads.
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

// New returns a Judge registering its metric on reg.
func New(ev Evaluator, events EventSink, reg prometheus.Registerer, log *slog.Logger) *Judge {
	r := &Judge{Evaluator: ev, Events: events, Log: log,
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

func (r *Judge) log() *slog.Logger {
	return logger.OrDiscard(r.Log)
}

// Decided remembers a workload the webhook admitted, the digests of its
// images and the windows of their builds' connections; it implements
// decision.Observer, and ignores denials and decisions of other sources.
// Workloads a controller owns are remembered through their owner. Late
// findings are recorded under the decision's ID, with a suffix. The
// admission time is w.At, else the decision's Time, else now (Judge.Clock).
func (r *Judge) Decided(_ context.Context, d decision.Decision) {
	w, v := d.Workload, d.Verdict
	if d.Source != decision.Admission || !v.Allowed || w.Controlled || w.Spec == nil {
		return
	}
	if w.At.IsZero() {
		w.At = d.Time
	}
	if w.At.IsZero() {
		w.At = r.now()
	}
	a := &admitted{key: w.Namespace + "/" + w.Kind + "/" + w.Name, uid: d.ID, w: w, rules: map[string]bool{}}
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
		max = DefaultWorkloads
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
func (r *Judge) setWatch(a *admitted, v policy.Verdict) {
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
func (r *Judge) unwatch(a *admitted) {
	for _, w := range a.watch {
		delete(r.byNode[w.Node], a.key)
		if len(r.byNode[w.Node]) == 0 {
			delete(r.byNode, w.Node)
		}
	}
}

func (r *Judge) forget(e *list.Element) {
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
func (r *Judge) Report(ctx context.Context, rep evidence.Report) {
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

func (r *Judge) judge(ctx context.Context, a *admitted) {
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
	// The findings new since admission: each is counted, logged and
	// posted, and the judgement is recorded once.
	type finding struct {
		iv policy.ImageVerdict
		f  policy.Finding
	}
	var found []finding
	for _, iv := range v.Images {
		for _, f := range iv.Findings {
			if !lateRules[f.Rule] {
				continue
			}
			if f.Action == policy.ActionIgnore || !r.firstTime(a, f.Rule) {
				continue
			}
			found = append(found, finding{iv, f})
			r.found.WithLabelValues(string(f.Rule), w.Namespace).Inc()
			r.log().Warn("late evidence: finding after admission", "namespace", w.Namespace, "kind", w.Kind, "name", w.Name,
				"image", iv.Image, "digest", iv.Digest, "rule", string(f.Rule), "verdict", string(f.Action), "message", f.Message)
		}
	}
	if len(found) == 0 {
		return
	}
	d := r.lateDecision(a, v)
	link := ""
	if r.Records != nil {
		link = r.Review.Decision(d.ID)
	}
	if r.Events != nil {
		for _, x := range found {
			r.Events.Event(w, "BuildguardLateEvidence", eventMessage(fmt.Sprintf("[%s] %s %s: %s (found after admission)", x.f.Rule, x.iv.Container, x.iv.Image, x.f.Message), link))
		}
	}
	if r.Records != nil {
		r.Records.Decided(ctx, d)
	}
}

// User is who a late judgement's decision says asked for it.
const User = "buildguard-late-evidence"

// lateDecision is the decision of a late judgement of a: the admission
// decision with the verdict judged now. Its ID is the admission's (or the
// workload's key) followed by "/late-" and the time; it is recorded as a
// would-deny rather than a deny, as the workload was admitted.
func (r *Judge) lateDecision(a *admitted, v policy.Verdict) decision.Decision {
	t := r.now().UTC()
	id := a.uid
	if id == "" {
		id = a.key
	}
	return decision.Decision{
		ID:        fmt.Sprintf("%s/late-%d", id, t.UnixMicro()),
		Source:    decision.LateEvidence,
		Operation: decision.OperationLateEvidence,
		User:      User,
		Workload:  a.w,
		Verdict:   v,
		Time:      t,
	}
}

func (r *Judge) now() time.Time {
	return clock.OrReal(r.Clock).Now()
}

// maxEventMessage keeps an Event's message within what the API server
// stores comfortably.
const maxEventMessage = 1000

// eventMessage is s, shortened to fit an Event with the link after it,
// whole; "" links nothing.
func eventMessage(s, link string) string {
	if link == "" {
		return shorten.Text(s, maxEventMessage)
	}
	return shorten.Text(s, maxEventMessage-len(" "+link)) + " " + link
}

// firstTime reports whether rule is new for a, and records it; reports
// judged at once share a.
func (r *Judge) firstTime(a *admitted, rule policy.RuleID) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if a.rules[string(rule)] {
		return false
	}
	a.rules[string(rule)] = true
	return true
}

// Found is the counter of retroactive findings, for tests and wiring.
func (r *Judge) Found() *prometheus.CounterVec { return r.found }
