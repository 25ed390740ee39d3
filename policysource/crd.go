package policysource

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/policy"
)

// CRD is the policy source of --policy-source=crd: it reads
// ClusterBuildPolicies and BuildPolicyExceptions through informers, keeps
// them compiled, selects them for workloads, and reports in each
// resource's status whether it was accepted. It implements
// engine.Policies.
type CRD struct {
	// Client reads the resources and writes their status. Required.
	Client dynamic.Interface
	// Log is the logger. The default discards.
	Log *slog.Logger
	// Clock tells the time of conditions. The default, nil, is the real
	// clock.
	Clock clock.Clock
	// Resync is the informers' resync period. The default is 10m.
	Resync time.Duration
	// Validate, when set, checks a compiled policy further, for what
	// compiling cannot (trust files it names, say); an error rejects the
	// generation like a compile error.
	Validate func(*policy.Policy) error
	// Leading reports whether this replica writes the resources' status
	// (cluster.StatusLease.Leading); the others only read them. The
	// default, nil, is always: a single process. A replica that starts
	// leading calls WriteStatus.
	Leading func() bool

	mu         sync.RWMutex
	policies   map[string]*compiledPolicy                   // by name
	exceptions map[string]map[string]compiledExcept         // namespace → name →
	informers  atomic.Pointer[[2]cache.SharedIndexInformer] // Run's: policies, exceptions
}

type compiledPolicy struct {
	p          *policy.Policy
	ns, obj    labels.Selector
	generation int64
}

type compiledExcept struct {
	x policy.Exceptions
}

// Run runs the informers until ctx ends, and returns once they, and the
// event handlers they were calling, have stopped. Synced reports when
// they have listed the resources.
func (s *CRD) Run(ctx context.Context) {
	s.mu.Lock()
	s.policies = map[string]*compiledPolicy{}
	s.exceptions = map[string]map[string]compiledExcept{}
	s.mu.Unlock()
	resync := s.Resync
	if resync <= 0 {
		resync = 10 * time.Minute
	}
	f := dynamicinformer.NewDynamicSharedInformerFactory(s.Client, resync)
	pi := f.ForResource(v1alpha1.PolicyResource()).Informer()
	ei := f.ForResource(v1alpha1.ExceptionResource()).Informer()
	pi.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.policyChanged(ctx, o) },
		UpdateFunc: func(_, o any) { s.policyChanged(ctx, o) },
		DeleteFunc: func(o any) { s.policyDeleted(o) },
	})
	ei.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { s.exceptionChanged(ctx, o) },
		UpdateFunc: func(_, o any) { s.exceptionChanged(ctx, o) },
		DeleteFunc: func(o any) { s.exceptionDeleted(o) },
	})
	s.informers.Store(&[2]cache.SharedIndexInformer{pi, ei})
	f.Start(ctx.Done())
	<-ctx.Done()
	f.Shutdown()
}

// Synced reports whether Run's informers have listed both kinds of
// resource; false before Run.
func (s *CRD) Synced() bool {
	inf := s.informers.Load()
	return inf != nil && inf[0].HasSynced() && inf[1].HasSynced()
}

// WriteStatus judges every resource the informers hold again and writes
// its status where it is not current: what a replica that starts leading
// does, as the events before went by unwritten. Status that another
// replica wrote for the same generation is left alone.
func (s *CRD) WriteStatus(ctx context.Context) {
	inf := s.informers.Load()
	if inf == nil {
		return
	}
	for _, o := range inf[0].GetStore().List() {
		s.policyChanged(ctx, o)
	}
	for _, o := range inf[1].GetStore().List() {
		s.exceptionChanged(ctx, o)
	}
}

func (s *CRD) log() *slog.Logger {
	return logger.OrDiscard(s.Log)
}

func (s *CRD) now() time.Time {
	return clock.OrReal(s.Clock).Now()
}

// Select implements engine.Policies: the policies whose selectors match,
// in name order, and the live exceptions of the namespace.
func (s *CRD) Select(namespace string, nsLabels, objLabels map[string]string) (engine.Selection, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var sel engine.Selection
	names := make([]string, 0, len(s.policies))
	for n := range s.policies {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		cp := s.policies[n]
		if cp.ns.Matches(labels.Set(nsLabels)) && cp.obj.Matches(labels.Set(objLabels)) {
			sel.Policies = append(sel.Policies, cp.p)
		}
	}
	enames := make([]string, 0, len(s.exceptions[namespace]))
	for n := range s.exceptions[namespace] {
		enames = append(enames, n)
	}
	sort.Strings(enames)
	for _, n := range enames {
		sel.Exceptions = sel.Exceptions.Join(s.exceptions[namespace][n].x)
	}
	return sel, nil
}

// compilePolicy turns a ClusterBuildPolicy into a policy and selectors.
func compilePolicy(u *unstructured.Unstructured) (*compiledPolicy, error) {
	var spec v1alpha1.PolicySpec
	if err := decodeSpec(u, &spec); err != nil {
		return nil, err
	}
	p, err := policy.CompileNamed(u.GetName(), spec.Spec)
	if err != nil {
		return nil, err
	}
	cp := &compiledPolicy{p: p, generation: u.GetGeneration()}
	if cp.ns, err = selector(spec.NamespaceSelector); err != nil {
		return nil, &policy.FieldError{Field: "namespaceSelector", Msg: err.Error()}
	}
	if cp.obj, err = selector(spec.ObjectSelector); err != nil {
		return nil, &policy.FieldError{Field: "objectSelector", Msg: err.Error()}
	}
	return cp, nil
}

func selector(ls *metav1.LabelSelector) (labels.Selector, error) {
	if ls == nil {
		return labels.Everything(), nil
	}
	return metav1.LabelSelectorAsSelector(ls)
}

func decodeSpec(u *unstructured.Unstructured, into any) error {
	raw, ok := u.Object["spec"]
	if !ok {
		return &policy.FieldError{Field: "spec", Msg: "required"}
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(into); err != nil {
		return &policy.FieldError{Field: "spec", Msg: err.Error()}
	}
	return nil
}

func (s *CRD) policyChanged(ctx context.Context, o any) {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return
	}
	cp, err := compilePolicy(u)
	if err == nil && s.Validate != nil {
		err = s.Validate(cp.p)
	}
	s.mu.Lock()
	prev := s.policies[u.GetName()]
	if err == nil {
		s.policies[u.GetName()] = cp
	}
	s.mu.Unlock()
	if err != nil {
		// Never half-applied: the last accepted generation stays in force.
		msg := err.Error()
		if prev != nil {
			msg += fmt.Sprintf("; generation %d stays in force", prev.generation)
		}
		s.log().Error("ClusterBuildPolicy rejected", "policy", u.GetName(), "generation", u.GetGeneration(), "error", err)
		s.setAccepted(ctx, v1alpha1.PolicyResource(), u, false, "Invalid", msg)
		return
	}
	if prev == nil || prev.generation != cp.generation {
		s.log().Info("ClusterBuildPolicy applied", "policy", u.GetName(), "generation", u.GetGeneration(), "mode", string(cp.p.Mode()))
	}
	s.setAccepted(ctx, v1alpha1.PolicyResource(), u, true, "Valid", fmt.Sprintf("generation %d is in force", u.GetGeneration()))
}

// deleted returns the object of a delete event, which may come as the
// informer's last known state.
func deleted(o any) (*unstructured.Unstructured, bool) {
	if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
		o = d.Obj
	}
	u, ok := o.(*unstructured.Unstructured)
	return u, ok
}

func (s *CRD) policyDeleted(o any) {
	u, ok := deleted(o)
	if !ok {
		return
	}
	s.mu.Lock()
	delete(s.policies, u.GetName())
	s.mu.Unlock()
	s.log().Info("ClusterBuildPolicy removed", "policy", u.GetName())
}

func (s *CRD) exceptionChanged(ctx context.Context, o any) {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return
	}
	x, spec, err := compileException(u)
	if err != nil {
		s.mu.Lock()
		delete(s.exceptions[u.GetNamespace()], u.GetName())
		s.mu.Unlock()
		s.log().Error("BuildPolicyException rejected", "namespace", u.GetNamespace(), "exception", u.GetName(), "error", err)
		s.setAccepted(ctx, v1alpha1.ExceptionResource(), u, false, "Invalid", err.Error())
		return
	}
	s.mu.Lock()
	if s.exceptions[u.GetNamespace()] == nil {
		s.exceptions[u.GetNamespace()] = map[string]compiledExcept{}
	}
	s.exceptions[u.GetNamespace()][u.GetName()] = compiledExcept{x: x}
	s.mu.Unlock()
	s.setAccepted(ctx, v1alpha1.ExceptionResource(), u, true, "Valid", "applies until "+spec.Expires)
}

// compileException turns a BuildPolicyException into exceptions of its
// namespace.
func compileException(u *unstructured.Unstructured) (policy.Exceptions, v1alpha1.ExceptionSpec, error) {
	var spec v1alpha1.ExceptionSpec
	if err := decodeSpec(u, &spec); err != nil {
		return policy.Exceptions{}, spec, err
	}
	x, err := policy.CompileExceptions("spec", []policy.Exception{{
		Images: spec.Images, Reason: spec.Reason, Expires: spec.Expires, ApprovedBy: spec.ApprovedBy,
		Name: u.GetNamespace() + "/" + u.GetName(),
	}})
	if err != nil {
		return policy.Exceptions{}, spec, fmt.Errorf("%s", strings.Replace(err.Error(), "spec[0].", "spec.", 1))
	}
	return x, spec, nil
}

func (s *CRD) exceptionDeleted(o any) {
	u, ok := deleted(o)
	if !ok {
		return
	}
	s.mu.Lock()
	delete(s.exceptions[u.GetNamespace()], u.GetName())
	s.mu.Unlock()
}

// setAccepted writes the Accepted condition unless it already says the
// same for this generation, so status writes do not feed back into
// endless updates.
func (s *CRD) setAccepted(ctx context.Context, gvr schema.GroupVersionResource, u *unstructured.Unstructured, ok bool, reason, msg string) {
	if s.Leading != nil && !s.Leading() {
		return
	}
	status := metav1.ConditionFalse
	if ok {
		status = metav1.ConditionTrue
	}
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == v1alpha1.ConditionAccepted && m["status"] == string(status) && m["reason"] == reason && m["message"] == msg &&
			fmt.Sprint(m["observedGeneration"]) == fmt.Sprint(u.GetGeneration()) {
			return
		}
	}
	cond := map[string]any{
		"type":               v1alpha1.ConditionAccepted,
		"status":             string(status),
		"reason":             reason,
		"message":            msg,
		"observedGeneration": u.GetGeneration(),
		"lastTransitionTime": s.now().UTC().Format(time.RFC3339),
	}
	c := u.DeepCopy()
	if err := unstructured.SetNestedSlice(c.Object, []any{cond}, "status", "conditions"); err != nil {
		return
	}
	_ = unstructured.SetNestedField(c.Object, u.GetGeneration(), "status", "observedGeneration")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var err error
	if u.GetNamespace() == "" {
		_, err = s.Client.Resource(gvr).UpdateStatus(ctx, c, metav1.UpdateOptions{})
	} else {
		_, err = s.Client.Resource(gvr).Namespace(u.GetNamespace()).UpdateStatus(ctx, c, metav1.UpdateOptions{})
	}
	if err != nil {
		// Another replica may have written it first; the next event retries.
		s.log().Info("status not written", "resource", gvr.Resource, "name", u.GetName(), "error", err)
	}
}
