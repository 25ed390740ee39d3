package webhook

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sort"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/policy"
)

// Evaluator judges a workload. *engine.Engine is one.
type Evaluator interface {
	Evaluate(ctx context.Context, w engine.Workload) (policy.Verdict, error)
}

// DecisionRecorder keeps a record of decisions. *records.Recorder is one.
type DecisionRecorder interface {
	// RecordDecision records a decision before it is answered. nil means
	// the record is kept as the recorder promises (a records.Recorder
	// has a deny or would-deny on disk); an error, that it may not be.
	RecordDecision(ctx context.Context, d decision.Decision) error
}

// maxWarning is the longest warning the API server shows unshortened.
const maxWarning = 120

// DefaultExceptionHelp is the last line of a denial message.
const DefaultExceptionHelp = "To admit it anyway, rebuild the image in an approved pipeline, or ask your platform team for a time-boxed exception for this digest."

// Review answers one admission request. It never fails: a request it
// cannot judge gets a response that says why. A would-deny the Recorder
// could not record, which ServeHTTP leaves unanswered (HTTP 503), is
// refused here, with status code 503.
func (h *Handler) Review(ctx context.Context, req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	resp, _, err := h.reviewDecoded(ctx, decoded{req: req})
	if err != nil {
		return errored(req.UID, http.StatusServiceUnavailable, err)
	}
	return resp
}

// reviewDecoded also returns the verdict, when there is one, for metrics.
// An error means the request must not be answered (see Handler.Recorder).
func (h *Handler) reviewDecoded(ctx context.Context, d decoded) (*admissionv1.AdmissionResponse, *policy.Verdict, error) {
	req := d.req
	w, _, resp := workloadOf(d)
	if resp != nil {
		return resp, nil, nil
	}
	v, err := h.Evaluator.Evaluate(ctx, w)
	if err != nil {
		return errored(req.UID, http.StatusInternalServerError, fmt.Errorf("buildguard could not evaluate this request: %w", err)), nil, nil
	}
	log := h.log()
	// An allow is logged at debug: at info, under load, allows were
	// nearly all of the log (25 MB in 20 s) and 7% of the CPU. Every
	// deny, would-deny and warn is logged at info.
	level := slog.LevelInfo
	if v.Word() == "allow" {
		level = slog.LevelDebug
	}
	if log.Enabled(ctx, level) {
		log.Log(ctx, level, "decided", "uid", string(req.UID), "namespace", req.Namespace, "kind", req.Kind.Kind, "name", w.Name,
			"verdict", string(v.Outcome), "mode", string(v.Mode), "allowed", v.Allowed, "rule", strings.Join(v.RuleIDs(policy.ActionWarn), ","))
	}
	dec := h.decision(req, w, v)
	var recErr error
	if h.Recorder != nil {
		recErr = h.Recorder.RecordDecision(ctx, dec)
	}
	for _, o := range h.Observers {
		o.Decided(ctx, dec)
	}
	if recErr == nil {
		return h.respond(req, w.Name, v), &v, nil
	}
	log.Error("decision not recorded", "uid", string(req.UID), "namespace", req.Namespace, "verdict", v.Word(), "error", recErr)
	if v.Allowed {
		return nil, nil, fmt.Errorf("buildguard could not record its decision (%s) in time: %w", v.Word(), recErr)
	}
	// Never admit what the policy denies: refuse, and say the record is
	// missing.
	resp = h.respond(req, w.Name, v)
	resp.Result.Code, resp.Result.Reason = http.StatusInternalServerError, metav1.StatusReasonInternalError
	resp.Result.Message += "\nbuildguard could not record this denial in time; the request is refused all the same: " + recErr.Error()
	return resp, nil, nil
}

// decision is the decision v on the workload w of the request req, made
// now.
func (h *Handler) decision(req *admissionv1.AdmissionRequest, w engine.Workload, v policy.Verdict) decision.Decision {
	return decision.Decision{
		ID: string(req.UID), Source: decision.Admission, Operation: string(req.Operation),
		User: req.UserInfo.Username, Groups: req.UserInfo.Groups,
		Workload: w, Verdict: v, Time: clock.OrReal(h.Clock).Now(),
	}
}

// workloadOf decodes what an admission request admits. A request with
// nothing to judge, or one that is at fault, gets its response instead.
func workloadOf(d decoded) (engine.Workload, workloadObject, *admissionv1.AdmissionResponse) {
	req := d.req
	if req.Operation != admissionv1.Create && req.Operation != admissionv1.Update {
		return engine.Workload{}, workloadObject{}, allowed(req.UID)
	}
	// Only the ephemeralcontainers subresource changes images; status,
	// scale and binding updates carry nothing to judge.
	if req.SubResource != "" && req.SubResource != "ephemeralcontainers" {
		return engine.Workload{}, workloadObject{}, allowed(req.UID)
	}
	obj, err := podSpecOf(d)
	if err != nil {
		// *UnsupportedKindError or *DecodeError: the request is at fault.
		return engine.Workload{}, obj, errored(req.UID, http.StatusBadRequest, err)
	}
	name := obj.meta.Name
	if name == "" {
		name = req.Name
	}
	w := engine.Workload{
		Namespace: req.Namespace, Kind: req.Kind.Kind, Name: name, Labels: obj.meta.Labels, Spec: obj.spec,
		Operation: string(req.Operation), Annotations: obj.annotations(),
		Controlled: obj.controlled() && controllerUser(req.UserInfo.Username),
	}
	if req.Operation == admissionv1.Update && (d.old != nil || !d.once && len(req.OldObject.Raw) > 0) {
		var old workloadObject
		var err error
		if d.once {
			old, err = workloadFrom(gvkOf(req), d.old)
		} else {
			old, err = decodeWorkload(gvkOf(req), req.OldObject.Raw)
		}
		if err != nil {
			return engine.Workload{}, obj, errored(req.UID, http.StatusBadRequest, fmt.Errorf("old object: %w", err))
		}
		w.OldSpec = old.spec
	}
	return w, obj, nil
}

func allowed(uid types.UID) *admissionv1.AdmissionResponse {
	return &admissionv1.AdmissionResponse{UID: uid, Allowed: true}
}

func errored(uid types.UID, code int32, err error) *admissionv1.AdmissionResponse {
	reason := metav1.StatusReasonBadRequest
	if code >= 500 {
		reason = metav1.StatusReasonInternalError
	}
	return &admissionv1.AdmissionResponse{
		UID:     uid,
		Allowed: false,
		Result:  &metav1.Status{Status: metav1.StatusFailure, Code: code, Message: err.Error(), Reason: reason},
	}
}

// respond turns a verdict into the admission response.
func (h *Handler) respond(req *admissionv1.AdmissionRequest, name string, v policy.Verdict) *admissionv1.AdmissionResponse {
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: v.Allowed, AuditAnnotations: auditAnnotations(v)}
	if !v.Allowed {
		resp.Result = &metav1.Status{
			Status:  metav1.StatusFailure,
			Code:    http.StatusForbidden,
			Reason:  metav1.StatusReasonForbidden,
			Message: h.denyMessage(req, name, v),
		}
		return resp
	}
	resp.Warnings = Warnings(v)
	return resp
}

// MaxDenyMessage bounds a denial message, in bytes: what a person reads
// from kubectl, and what the API server logs and returns. Findings that
// do not fit are counted, with their rule IDs, in a line of their own;
// the audit annotation "rules" still names every rule, and the decision
// record keeps every finding.
const MaxDenyMessage = 8 << 10

// maxFindingLine bounds one finding's line, and the help line, in a
// denial message.
const maxFindingLine = 1024

// omittedReserve is kept free for the line that counts what is left out.
const omittedReserve = 512

// denyMessage is what a person sees from kubectl: what was denied, which
// container and image, which rule, the evidence, and what to do. Findings
// are listed in order while they fit in MaxDenyMessage.
func (h *Handler) denyMessage(req *admissionv1.AdmissionRequest, name string, v policy.Verdict) string {
	return DenyMessage(req.Kind.Kind, req.Namespace, name, v, h.ExceptionHelp)
}

// DenyMessage is the message of a denial of the workload kind
// namespace/name by v, as kubectl shows it; help is its last line, and
// DefaultExceptionHelp when empty. `buildguard check` says the same.
func DenyMessage(kind, namespace, name string, v policy.Verdict, help string) string {
	denied := 0
	for _, iv := range v.Images {
		if iv.Outcome == policy.OutcomeDeny {
			denied++
		}
	}
	if help == "" {
		help = DefaultExceptionHelp
	}
	help = shorten.Text(help, maxFindingLine)
	var b strings.Builder
	fmt.Fprintf(&b, "buildguard denied %s %q in namespace %q: %d of %d images failed policy.", kind, name, namespace, denied, len(v.Images))
	limit := MaxDenyMessage - len(help) - 1 - omittedReserve
	full := false
	moreFindings, moreImages := 0, 0
	moreRules := map[policy.RuleID]bool{}
	// add writes head (unless empty) and line if they fit and nothing
	// was left out before them; it reports whether it wrote them.
	add := func(head, line string, rule policy.RuleID) bool {
		if !full && b.Len()+len(head)+len(line) <= limit {
			b.WriteString(head)
			b.WriteString(line)
			return true
		}
		full = true
		moreFindings++
		moreRules[rule] = true
		return false
	}
	for _, iv := range v.Images {
		if iv.Outcome != policy.OutcomeDeny {
			continue
		}
		digest := ""
		if iv.Digest != "" && !strings.HasSuffix(iv.Image, "@"+iv.Digest) {
			digest = " (" + iv.Digest + ")"
		}
		head := shorten.Text(fmt.Sprintf("- %s %q image %s%s:", iv.ContainerKind, iv.Container, iv.Image, digest), maxFindingLine)
		head = "\n" + head
		listed, denies := false, false
		for _, f := range iv.Findings {
			if f.Action != policy.ActionDeny {
				continue
			}
			denies = true
			first := head
			if listed {
				first = ""
			}
			if add(first, "\n  ["+string(f.Rule)+"] "+shorten.Text(f.Message, maxFindingLine), f.Rule) {
				listed = true
			}
		}
		if denies && !listed {
			moreImages++
		}
	}
	for _, f := range v.Findings {
		if f.Action == policy.ActionDeny {
			add("", "\n- ["+string(f.Rule)+"] "+shorten.Text(f.Message, maxFindingLine), f.Rule)
		}
	}
	if moreFindings > 0 {
		rules := make([]string, 0, len(moreRules))
		for r := range moreRules {
			rules = append(rules, string(r))
		}
		sort.Strings(rules)
		fmt.Fprintf(&b, "\n… %d more findings", moreFindings)
		if moreImages > 0 {
			fmt.Fprintf(&b, " on %d more images", moreImages)
		}
		fmt.Fprintf(&b, " not shown (%s)", shorten.Text(strings.Join(rules, ", "), omittedReserve-80))
	}
	b.WriteString("\n")
	b.WriteString(help)
	return b.String()
}

// MaxWarnings bounds the warnings of one admission response: the API
// server passes on only the first 4 KiB of them. The last one says how
// many more findings there are.
const MaxWarnings = 32

// Warnings are the warnings of an admission that v admits, as kubectl
// shows them: one line per finding that did not deny, and, outside
// enforce mode, per finding that would have; each fits in 120 bytes, and
// there are at most MaxWarnings.
func Warnings(v policy.Verdict) []string {
	var out []string
	seen := map[string]bool{}
	more := 0
	add := func(w string) {
		w = shorten.Text(w, maxWarning)
		switch {
		case seen[w]:
		case len(out) < MaxWarnings:
			seen[w] = true
			out = append(out, w)
		default:
			seen[w] = true
			more++
		}
	}
	prefix := "buildguard: "
	if v.Outcome == policy.OutcomeDeny {
		prefix = fmt.Sprintf("buildguard would deny (%s mode): ", v.Mode)
	}
	for _, iv := range v.Images {
		for _, f := range iv.Findings {
			if f.Action == policy.ActionIgnore {
				continue
			}
			// Concatenated, not formatted: one string, not one per
			// argument besides.
			w := prefix + iv.Container + ": [" + string(f.Rule) + "] " + f.Summary
			if iv.Exception != nil {
				w = "buildguard: " + iv.Container + ": [" + string(f.Rule) + "] admitted by exception " + iv.Exception.Name + " (" + iv.Exception.Reason + ")"
			}
			add(w)
		}
	}
	for _, f := range v.Findings {
		add(prefix + "[" + string(f.Rule) + "] " + f.Summary)
	}
	if more > 0 {
		out = append(out[:MaxWarnings-1], fmt.Sprintf("buildguard: %d more findings not shown", more+1))
	}
	return out
}

// Audit annotation keys; the API server prefixes them with the webhook's
// name, e.g. "validate.buildguard.dev/verdict".
const (
	AnnotationVerdict    = "verdict"
	AnnotationMode       = "mode"
	AnnotationDigests    = "digests"
	AnnotationRules      = "rules"
	AnnotationExceptions = "exceptions"
	AnnotationChangeID   = "change-id"
)

// auditAnnotations record every decision: verdict ("would-deny" in audit
// and warn modes), mode, the digest of each container's image, the rule
// IDs found, and the exceptions used.
func auditAnnotations(v policy.Verdict) map[string]string {
	a := map[string]string{AnnotationVerdict: v.Word(), AnnotationMode: string(v.Mode)}
	if d := digestsAnnotation(v.Images); d != "" {
		a[AnnotationDigests] = d
	}
	if rules := v.RuleIDs(policy.ActionWarn); len(rules) > 0 {
		a[AnnotationRules] = strings.Join(rules, ",")
	}
	var exceptions []string
	for _, iv := range v.Images {
		if iv.Exception != nil {
			exceptions = append(exceptions, iv.Container+"="+iv.Exception.Name)
		}
	}
	if len(exceptions) > 0 {
		a[AnnotationExceptions] = strings.Join(exceptions, ",")
	}
	if v.ChangeID != "" {
		a[AnnotationChangeID] = v.ChangeID
	}
	return a
}

// digestsAnnotation is the digest of each container's image, as
// json.Marshal writes the map container → digest (keys sorted, the last
// image of a container name winning), or "" when no image has a digest.
// It is written without the map, in a buffer on the stack: this runs for
// every review.
func digestsAnnotation(images []policy.ImageVerdict) string {
	type pair struct{ container, digest string }
	var small [8]pair
	pairs := small[:0]
	for _, iv := range images {
		if iv.Digest != "" {
			pairs = append(pairs, pair{iv.Container, iv.Digest})
		}
	}
	if len(pairs) == 0 {
		return ""
	}
	slices.SortStableFunc(pairs, func(a, b pair) int { return strings.Compare(a.container, b.container) })
	var buf [512]byte
	b := append(buf[:0], '{')
	for i, p := range pairs {
		if i+1 < len(pairs) && pairs[i+1].container == p.container {
			continue // a map keeps the last
		}
		if len(b) > 1 {
			b = append(b, ',')
		}
		b = appendString(b, p.container)
		b = append(b, ':')
		b = appendString(b, p.digest)
	}
	return string(append(b, '}'))
}
