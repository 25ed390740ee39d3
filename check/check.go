// Package check judges Kubernetes manifests before they are applied — a
// CI step in front of `kubectl apply`, as `kyverno apply` or `gator
// verify` are — with the engine the webhook judges admissions with: the
// same policies, exceptions, namespace modes, registry lookups and
// caches. It writes what it found for people, as JSON lines, as JUnit XML
// and as SARIF 2.1.0, each finding at the file and line of the
// container's image.
package check

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/runtime/schema"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/manifest"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/webhook"
)

// Defaults of a Checker.
const (
	DefaultNamespace   = "default"
	DefaultConcurrency = 8
)

// Evaluator judges a workload. *engine.Engine is one.
type Evaluator interface {
	Evaluate(ctx context.Context, w engine.Workload) (policy.Verdict, error)
}

// Checker judges the workloads of manifests.
type Checker struct {
	// Evaluator judges each workload. Required.
	Evaluator Evaluator
	// Namespace is the namespace of objects that name none, as
	// `kubectl apply --namespace` would put them in. The default is
	// DefaultNamespace.
	Namespace string
	// Concurrency is how many workloads are judged at once. The default
	// is DefaultConcurrency.
	Concurrency int
	// Clock tells the time of CheckedAt. The default, nil, is the real
	// clock.
	Clock clock.Clock
}

// Image is the verdict on one container's image, and where the image is.
type Image struct {
	Container     string               `json:"container"`
	ContainerKind policy.ContainerKind `json:"containerKind"`
	Image         string               `json:"image"`
	// Line and Column are where the container's image: is; 0 when the
	// manifest does not say (the image is missing).
	Line   int `json:"line"`
	Column int `json:"column"`
	// Digest is what the image resolved to; "" when it was not resolved.
	Digest    string               `json:"digest"`
	Verdict   policy.Outcome       `json:"verdict"`
	Findings  []policy.Finding     `json:"findings"`
	Exception *policy.ExceptionUse `json:"exception,omitempty"`
}

// Result is what became of one workload of the manifests.
type Result struct {
	File       string `json:"file"`
	Line       int    `json:"line"`
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace"`
	Name       string `json:"name"`
	// Verdict is what the rules decide, before the mode: allow, warn or
	// deny; empty when the workload was not judged.
	Verdict policy.Outcome `json:"verdict,omitempty"`
	// Mode is the mode in force in the workload's namespace.
	Mode policy.Mode `json:"mode,omitempty"`
	// Admitted is whether the API server would admit it.
	Admitted bool    `json:"admitted"`
	Images   []Image `json:"images"`
	// Findings are about the workload rather than one image.
	Findings []policy.Finding `json:"findings"`
	// Skipped says why the workload was not judged: it cannot be applied
	// as it is (a kustomize patch, say).
	Skipped string `json:"skipped,omitempty"`
	// Error says why it could not be judged.
	Error     string    `json:"error,omitempty"`
	CheckedAt time.Time `json:"checkedAt"`

	verdict policy.Verdict
}

// Judged reports whether the workload was judged.
func (r *Result) Judged() bool { return r.Skipped == "" && r.Error == "" }

// Denied reports whether the API server would deny the workload.
func (r *Result) Denied() bool { return r.Judged() && !r.Admitted }

// Unavailable reports whether an image of the workload could not be
// looked up in its registry, so that the verdict rests on the policy's
// failurePolicy, not on the image.
func (r *Result) Unavailable() bool {
	for _, im := range r.Images {
		for _, f := range im.Findings {
			if f.Rule == policy.RuleRegistryUnavailable {
				return true
			}
		}
	}
	return false
}

// Word is the result in one word: allowed, warned, denied, would-deny
// (audit or warn mode), skipped or error.
func (r *Result) Word() string {
	switch {
	case r.Error != "":
		return "error"
	case r.Skipped != "":
		return "skipped"
	case !r.Admitted:
		return "denied"
	case r.Verdict == policy.OutcomeDeny:
		return policy.WouldDeny
	case r.Verdict == policy.OutcomeWarn:
		return "warned"
	}
	return "allowed"
}

// DenyMessage is what kubectl would show for a denied workload: the
// webhook's own message.
func (r *Result) DenyMessage() string {
	return webhook.DenyMessage(r.Kind, r.Namespace, r.Name, r.verdict, "")
}

// Warnings are the warnings kubectl would show for an admitted workload.
func (r *Result) Warnings() []string { return webhook.Warnings(r.verdict) }

// Report is what a check found.
type Report struct {
	// Files are the manifests read, in order.
	Files []string `json:"files"`
	// Objects is how many objects they hold.
	Objects int `json:"objects"`
	// Results are the workloads, in the order of the manifests.
	Results []Result `json:"results"`
	// Skipped are the documents that are not Kubernetes objects.
	Skipped []manifest.Skipped `json:"skippedDocuments"`
}

// Counts of a report's workloads by Result.Word.
func (r *Report) Counts() map[string]int {
	c := map[string]int{}
	for i := range r.Results {
		c[r.Results[i].Word()]++
	}
	return c
}

// Failed reports whether the check has no answer for some workload: it
// could not be judged, or a registry could not be asked.
func (r *Report) Failed() bool {
	for i := range r.Results {
		if r.Results[i].Error != "" || r.Results[i].Unavailable() {
			return true
		}
	}
	return false
}

// Denied reports whether the API server would deny some workload.
func (r *Report) Denied() bool {
	for i := range r.Results {
		if r.Results[i].Denied() {
			return true
		}
	}
	return false
}

// workloadKind returns the webhook's kind for an object's apiVersion and
// kind, and whether the kind is one the webhook judges in another
// version.
func workloadKind(apiVersion, kind string) (gvk schema.GroupVersionKind, ok, otherVersion bool) {
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		return gvk, false, false
	}
	for _, k := range webhook.Kinds() {
		if k.Kind != kind {
			continue
		}
		if k.GroupVersion() == gv {
			return k, true, false
		}
		if k.Group == gv.Group {
			otherVersion = true
		}
	}
	return gvk, false, otherVersion
}

// Check judges every workload of s, in order, Concurrency at a time. It
// returns an error only when ctx ends; a workload that cannot be judged
// has its Error set.
func (c *Checker) Check(ctx context.Context, s *manifest.Stream) (*Report, error) {
	if c.Evaluator == nil {
		return nil, errors.New("check: Checker needs an Evaluator")
	}
	now := clock.OrReal(c.Clock).Now
	ns := c.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	r := &Report{Objects: len(s.Objects), Skipped: s.Skipped, Results: []Result{}}
	type job struct {
		i int
		w engine.Workload
		o *manifest.Object
	}
	var jobs []job
	files := map[string]bool{}
	for i := range s.Objects {
		o := &s.Objects[i]
		if !files[o.File] {
			files[o.File] = true
			r.Files = append(r.Files, o.File)
		}
		gvk, ok, other := workloadKind(o.APIVersion, o.Kind)
		if !ok && !other {
			continue
		}
		res := Result{File: o.File, Line: o.Pos.Line, APIVersion: o.APIVersion, Kind: o.Kind, Namespace: o.Namespace, Name: o.Name,
			Images: []Image{}, Findings: []policy.Finding{}}
		if res.Namespace == "" {
			res.Namespace = ns
		}
		if other {
			res.Skipped = fmt.Sprintf("buildguard judges %s, not %s %s: the API server would not take it as it is", kindVersions(o.Kind), o.APIVersion, o.Kind)
			r.Results = append(r.Results, res)
			continue
		}
		w, specPath, err := webhook.DecodeWorkload(gvk, o.JSON)
		if err != nil {
			res.Error = err.Error()
			r.Results = append(r.Results, res)
			continue
		}
		w.Namespace, w.Operation = res.Namespace, "CREATE"
		if w.Spec != nil {
			for _, ct := range engine.Containers(w.Spec) {
				res.Images = append(res.Images, Image{Container: ct.Name, ContainerKind: ct.Kind, Image: ct.Image, Findings: []policy.Finding{}})
			}
			positions(o, specPath, w, res.Images)
			for _, im := range res.Images {
				if strings.TrimSpace(im.Image) == "" {
					res.Skipped = fmt.Sprintf("%s %q has no image: not an object the API server would take as it is (a kustomize patch? check the output of kustomize build)", im.ContainerKind, im.Container)
					break
				}
			}
		}
		r.Results = append(r.Results, res)
		if res.Skipped == "" {
			jobs = append(jobs, job{len(r.Results) - 1, w, o})
		}
	}

	workers := c.Concurrency
	if workers <= 0 {
		workers = DefaultConcurrency
	}
	next := make(chan job)
	var wg sync.WaitGroup
	for range min(workers, max(1, len(jobs))) {
		wg.Go(func() {
			for j := range next {
				res := &r.Results[j.i]
				v, err := c.Evaluator.Evaluate(ctx, j.w)
				res.CheckedAt = now().UTC()
				if err == nil && ctx.Err() != nil {
					err = ctx.Err()
				}
				if err != nil {
					res.Error = err.Error()
					continue
				}
				res.setVerdict(v)
			}
		})
	}
	for _, j := range jobs {
		select {
		case next <- j:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
	}
	close(next)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return r, fmt.Errorf("check stopped: %w", err)
	}
	return r, nil
}

func (res *Result) setVerdict(v policy.Verdict) {
	res.verdict = v
	res.Verdict, res.Mode, res.Admitted = v.Outcome, v.Mode, v.Allowed
	if v.Findings != nil {
		res.Findings = v.Findings
	}
	// The engine keeps the containers' order: the verdicts line up with
	// the images found in the manifest.
	for i := range res.Images {
		if i >= len(v.Images) {
			break
		}
		iv := v.Images[i]
		im := &res.Images[i]
		im.Digest, im.Verdict, im.Exception = iv.Digest, iv.Outcome, iv.Exception
		if iv.Findings != nil {
			im.Findings = iv.Findings
		}
	}
}

// positions finds where each container's image is: the JSON pointers of
// the pod spec's lists, in the order engine.Containers walks them.
func positions(o *manifest.Object, specPath string, w engine.Workload, images []Image) {
	lists := []struct {
		key string
		n   int
	}{{"initContainers", len(w.Spec.InitContainers)}, {"containers", len(w.Spec.Containers)}, {"ephemeralContainers", len(w.Spec.EphemeralContainers)}}
	k := 0
	for _, l := range lists {
		for i := range l.n {
			ptr := fmt.Sprintf("%s/%s/%d", specPath, l.key, i)
			p, ok := o.Position(ptr + "/image")
			if !ok {
				p, ok = o.Position(ptr)
			}
			if !ok {
				p = o.Pos
			}
			images[k].Line, images[k].Column = p.Line, p.Column
			k++
		}
	}
}

// kindVersions names the group/versions of kind that the webhook judges.
func kindVersions(kind string) string {
	var out []string
	for _, k := range webhook.Kinds() {
		if k.Kind == kind {
			out = append(out, k.GroupVersion().String()+" "+k.Kind)
		}
	}
	return strings.Join(out, ", ")
}
