package webhook

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	admissionv1 "k8s.io/api/admission/v1"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/policy"
)

// Annotations the mutating webhook writes on the object (on the pod
// template for workloads, so the pods carry them too).
const (
	AnnotationPodVerdict   = "buildguard.dev/verdict"
	AnnotationPodDigests   = "buildguard.dev/digests"
	AnnotationPodDecidedAt = "buildguard.dev/decided-at"
	AnnotationPodWarnings  = "buildguard.dev/warnings"
)

// Mutator serves POST /mutate: it pins every image to the digest that
// was judged (repo:tag@sha256:…, the tag kept for readability), closing
// the race in which a tag moves between admission and pull, and
// annotates what buildguard decided. It never denies: the validating
// webhook, called after it, judges the pinned digests (from the shared
// cache). A mutation that fails leaves the object alone, and the
// validating webhook then judges the tag.
type Mutator struct {
	// Evaluator judges workloads. Required.
	Evaluator Evaluator
	// Clock tells the time of the decided-at annotation. The default,
	// nil, is the real clock.
	Clock clock.Clock
	// Log is the logger. The default discards.
	Log *slog.Logger
	// MaxBodyBytes caps the request body. The default is DefaultMaxBodyBytes.
	MaxBodyBytes int64
}

// ServeHTTP implements http.Handler.
func (m *Mutator) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	log := logger.OrDiscard(m.Log)
	// The mutator looks for the pods' metadata in the raw object, so it
	// keeps it: decodeTwice.
	serveReview(w, r, m.MaxBodyBytes, log, nil, decodeTwice, func(ctx context.Context, d decoded) (*admissionv1.AdmissionResponse, *policy.Verdict, error) {
		return m.Mutate(ctx, d.req), nil, nil
	})
}

// PatchOp is one JSON Patch (RFC 6902) operation.
type PatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// Mutate answers one admission request with a JSON Patch, or with none
// when there is nothing to change.
func (m *Mutator) Mutate(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	w, obj, early := workloadOf(decoded{req: req})
	if early != nil || obj.spec == nil || w.Controlled || !w.ImageChange() {
		// Nothing to pin or annotate (see Patch), or a bad request the
		// validating webhook reports: no evaluation either.
		return resp
	}
	v, err := m.Evaluator.Evaluate(ctx, w)
	if err != nil {
		if m.Log != nil {
			m.Log.Warn("not pinned: evaluation failed", "uid", string(req.UID), "error", err)
		}
		return resp
	}
	obj.metaMissing = !pointerExists(req.Object.Raw, obj.metaPath)
	ops := Patch(obj, w, v, clock.OrReal(m.Clock).Now())
	if len(ops) == 0 {
		return resp
	}
	b, err := json.Marshal(ops)
	if err != nil {
		return resp
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = b, &pt
	return resp
}

// Patch builds the JSON Patch for a workload and its verdict: each image
// not yet pinned gets the digest it was judged at (an index's digest for
// a multi-platform image, never one child's), when a policy wants
// pinning; and, for an image change of an object no controller owns, the
// verdict annotations. Objects a controller owns are never annotated:
// their template comes from the owner's, which has them, and a
// ReplicaSet whose template differed from its Deployment's would make the
// Deployment controller roll out again. Patch only touches images and
// annotations.
func Patch(obj workloadObject, w engine.Workload, v policy.Verdict, now time.Time) []PatchOp {
	var ops []PatchOp
	if w.Controlled || !w.ImageChange() {
		// A controller's object copies its owner's template (pinned when
		// the owner changed); rewriting it would make a ReplicaSet differ
		// from its Deployment. An UPDATE that changes no image must not
		// restart anything either.
		return nil
	}
	old := map[string]string{}
	if w.OldSpec != nil {
		for _, c := range engine.Containers(w.OldSpec) {
			old[string(c.Kind)+"/"+c.Name] = c.Image
		}
	}
	if v.Pin {
		lists := []struct {
			field string
			n     int
		}{
			{"initContainers", len(obj.spec.InitContainers)},
			{"containers", len(obj.spec.Containers)},
			{"ephemeralContainers", len(obj.spec.EphemeralContainers)},
		}
		k := 0 // index into v.Images, in engine.Containers order
		for _, l := range lists {
			for i := 0; i < l.n; i++ {
				if k >= len(v.Images) {
					break
				}
				iv := v.Images[k]
				k++
				if prev, ok := old[string(iv.ContainerKind)+"/"+iv.Container]; ok && prev == iv.Image {
					continue // this container's image did not change
				}
				if pinned, ok := pin(iv.Image, iv.Digest); ok {
					ops = append(ops, PatchOp{Op: "replace", Path: jsonPointer(obj.specPath, l.field, itoa(i), "image"), Value: pinned})
				}
			}
		}
	}
	ann := map[string]string{
		AnnotationPodVerdict:   v.Word(),
		AnnotationPodDecidedAt: now.UTC().Format(time.RFC3339),
	}
	digests := map[string]string{}
	for _, iv := range v.Images {
		if iv.Digest != "" {
			digests[iv.Container] = iv.Digest
		}
	}
	if len(digests) > 0 {
		b, _ := json.Marshal(digests) // map[string]string always marshals
		ann[AnnotationPodDigests] = string(b)
	}
	if rules := v.RuleIDs(policy.ActionWarn); len(rules) > 0 {
		ann[AnnotationPodWarnings] = strings.Join(rules, ",")
	}
	if obj.metaMissing {
		return append(ops, PatchOp{Op: "add", Path: obj.metaPath, Value: map[string]any{"annotations": ann}})
	}
	existing := obj.meta.Annotations
	if obj.template != nil {
		existing = obj.template.Annotations
	}
	if existing == nil {
		return append(ops, PatchOp{Op: "add", Path: obj.metaPath + "/annotations", Value: ann})
	}
	keys := make([]string, 0, len(ann))
	for k := range ann {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if existing[k] == ann[k] {
			continue
		}
		ops = append(ops, PatchOp{Op: "add", Path: jsonPointer(obj.metaPath, "annotations", k), Value: ann[k]})
	}
	return ops
}

// pin returns image pinned to digest, keeping its tag, unless it already
// names a digest or no digest is known.
func pin(image, digest string) (string, bool) {
	if digest == "" || strings.Contains(image, "@") {
		return "", false
	}
	if _, err := name.ParseReference(image); err != nil {
		return "", false
	}
	return image + "@" + digest, true
}

// jsonPointer joins path segments, escaping "~" and "/" (RFC 6901).
func jsonPointer(base string, segs ...string) string {
	var b strings.Builder
	b.WriteString(base)
	for _, s := range segs {
		b.WriteByte('/')
		b.WriteString(strings.NewReplacer("~", "~0", "/", "~1").Replace(s))
	}
	return b.String()
}

func itoa(i int) string { return strconv.Itoa(i) }

// pointerExists reports whether the JSON document raw has a value at the
// JSON pointer p (RFC 6901; only object members, which is all it needs).
func pointerExists(raw []byte, p string) bool {
	var doc any
	if json.Unmarshal(raw, &doc) != nil {
		return false
	}
	for _, seg := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
		m, ok := doc.(map[string]any)
		if !ok {
			return false
		}
		seg = strings.NewReplacer("~1", "/", "~0", "~").Replace(seg)
		if doc, ok = m[seg]; !ok || doc == nil {
			return false
		}
	}
	return true
}
