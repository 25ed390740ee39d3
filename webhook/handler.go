// Package webhook speaks admission.k8s.io/v1 AdmissionReview over HTTP.
// Handler (/validate) decodes the review and the workload of every kind
// with a pod template (Kinds), hands it to an Evaluator, makes a deny or
// would-deny durable through a DecisionRecorder before it answers, tells
// its observers the decision.Decision, and turns the verdict into the
// response: allowed, deny message, warnings, audit annotations. Mutator
// (/mutate) pins each admitted tag to the digest that was judged. Metrics
// counts reviews by verdict, rule and namespace. DecodeWorkload,
// DenyMessage and Warnings serve `buildguard check -f` the same way outside
// admission. It knows nothing of registries or stores.
package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/policy"
)

// DefaultMaxBodyBytes caps an AdmissionReview body. The API server stores
// objects up to 1.5 MiB; an UPDATE carries two of them.
const DefaultMaxBodyBytes = 7 << 20

// Headroom is kept free of the API server's webhook timeout, for the
// answer to travel back.
const Headroom = 500 * time.Millisecond

// Handler serves POST /validate.
type Handler struct {
	// Evaluator judges workloads. Required.
	Evaluator Evaluator
	// Metrics records reviews. Optional.
	Metrics *Metrics
	// Log receives one line per decision. The default discards.
	Log *slog.Logger
	// MaxBodyBytes caps the request body. The default is DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// ExceptionHelp ends every denial message. The default is
	// DefaultExceptionHelp.
	ExceptionHelp string
	// Observers are told of every decision after it is made (metrics,
	// Events, judging evidence that arrives later), in order. They must
	// not block: the API server is waiting.
	Observers []decision.Observer
	// Recorder, when set, records every decision before it is answered
	// (and before the Observers are told). A deny it could not record is
	// still refused, with status code 500 and a message saying the
	// denial is not recorded; any other decision it could not record
	// (a would-deny) gets no AdmissionReview but HTTP 503, so that the
	// API server applies the webhook's failurePolicy, as when buildguard
	// does not answer at all.
	Recorder DecisionRecorder
	// Clock tells the time of decisions. The default, nil, is the real
	// clock.
	Clock clock.Clock
}

func (h *Handler) log() *slog.Logger {
	return logger.OrDiscard(h.Log)
}

// RequestError is an HTTP request that is not an AdmissionReview.
type RequestError struct {
	Code int
	Msg  string
}

func (e *RequestError) Error() string { return e.Msg }

// ServeHTTP decodes an AdmissionReview, reviews it, and answers with an
// AdmissionReview. A body that is not a valid v1 AdmissionReview gets a
// 4xx status with the reason as plain text.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serveReview(w, r, h.MaxBodyBytes, h.log(), h.Metrics, decodeOnce, h.reviewDecoded)
}

// decoded is an AdmissionReview as ServeHTTP decodes it.
type decoded struct {
	typeMeta metav1.TypeMeta
	req      *admissionv1.AdmissionRequest
	// once is set when the objects were decoded in the same pass as the
	// review, into obj and old (nil when the request has none, or null);
	// req.Object and req.OldObject are then empty. Otherwise workloadOf
	// decodes req.Object.Raw and req.OldObject.Raw.
	once     bool
	obj, old *wireObject
}

// serveReview decodes an AdmissionReview with decode, answers it with
// review within the API server's timeout, and writes the AdmissionReview
// back.
func serveReview(w http.ResponseWriter, r *http.Request, limit int64, log *slog.Logger, m *Metrics,
	decode func([]byte) (decoded, error),
	review func(context.Context, decoded) (*admissionv1.AdmissionResponse, *policy.Verdict, error)) {
	start := time.Now()
	in, err := readReview(w, r, limit, decode)
	if err != nil {
		var re *RequestError
		if !errors.As(err, &re) {
			re = &RequestError{Code: http.StatusBadRequest, Msg: err.Error()}
		}
		log.Warn("bad admission request", "error", re.Msg, "remote", r.RemoteAddr, "path", r.URL.Path)
		if m != nil {
			m.badRequests.Inc()
		}
		http.Error(w, re.Msg, re.Code)
		return
	}
	ctx := r.Context()
	// The API server says how long it waits (?timeout=10s); answer with
	// headroom to spare rather than be cut off.
	if t, err := time.ParseDuration(r.URL.Query().Get("timeout")); err == nil && t > 2*Headroom {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t-Headroom)
		defer cancel()
	}
	resp, v, err := review(ctx, in)
	if m != nil {
		m.observe(resp, v, time.Since(start))
	}
	if err != nil {
		// No answer: the API server applies its failurePolicy.
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	body, ok := appendReview(make([]byte, 0, 512), in.typeMeta, resp)
	if !ok {
		var buf bytes.Buffer
		out := admissionv1.AdmissionReview{TypeMeta: in.typeMeta, Response: resp}
		if err := json.NewEncoder(&buf).Encode(&out); err != nil {
			http.Error(w, "encoding response: "+err.Error(), http.StatusInternalServerError)
			return
		}
		body = buf.Bytes()
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}

func readReview(w http.ResponseWriter, r *http.Request, limit int64, decode func([]byte) (decoded, error)) (decoded, error) {
	if r.Method != http.MethodPost {
		return decoded{}, &RequestError{Code: http.StatusMethodNotAllowed, Msg: "use POST with an admission.k8s.io/v1 AdmissionReview"}
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return decoded{}, &RequestError{Code: http.StatusUnsupportedMediaType, Msg: fmt.Sprintf("content type %q: want application/json", ct)}
		}
	}
	if limit <= 0 {
		limit = DefaultMaxBodyBytes
	}
	body, err := readBody(http.MaxBytesReader(w, r.Body, limit), r.ContentLength, limit)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return decoded{}, &RequestError{Code: http.StatusRequestEntityTooLarge, Msg: fmt.Sprintf("body larger than %d bytes", limit)}
		}
		return decoded{}, &RequestError{Code: http.StatusBadRequest, Msg: "reading body: " + err.Error()}
	}
	return decode(body)
}

// readBody reads r to its end, like io.ReadAll, into a slice that holds
// the size the request declares (up to limit) without growing.
func readBody(r io.Reader, size, limit int64) ([]byte, error) {
	if size <= 0 || size > limit {
		return io.ReadAll(r)
	}
	b := make([]byte, 0, size+1) // +1: the read that sees EOF needs room
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // a body longer than declared
		}
	}
}

// decodeTwice decodes the review with DecodeReview, keeping the objects
// raw for workloadOf to decode.
func decodeTwice(body []byte) (decoded, error) {
	rv, err := DecodeReview(body)
	if err != nil {
		return decoded{}, err
	}
	return decoded{typeMeta: rv.TypeMeta, req: rv.Request}, nil
}

// decodeOnce decodes the review and the objects it carries in one pass,
// with decodeFast. Decoding a Deployment's review twice, first with the
// object kept raw, then the raw object, cost more than everything else
// a cached review does. A body decodeFast does not vouch for is decoded
// again the two-pass way with encoding/json, whose errors and responses
// are the reference: the fast way only serves well-formed reviews.
// FuzzDecodeOnce compares the two.
func decodeOnce(body []byte) (decoded, error) {
	if d, ok := decodeFast(body); ok {
		return d, nil
	}
	return decodeTwice(body)
}

// DecodeReview parses an admission.k8s.io/v1 AdmissionReview carrying a
// request. Errors are *RequestError.
func DecodeReview(body []byte) (*admissionv1.AdmissionReview, error) {
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, &RequestError{Code: http.StatusBadRequest, Msg: "empty body: want an admission.k8s.io/v1 AdmissionReview"}
	}
	var review admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &review); err != nil {
		return nil, &RequestError{Code: http.StatusBadRequest, Msg: "body is not an AdmissionReview: " + err.Error()}
	}
	if review.APIVersion != "admission.k8s.io/v1" || review.Kind != "AdmissionReview" {
		return nil, &RequestError{Code: http.StatusBadRequest,
			Msg: fmt.Sprintf("got apiVersion %q kind %q: want admission.k8s.io/v1 AdmissionReview (set admissionReviewVersions: [v1])", review.APIVersion, review.Kind)}
	}
	if review.Request == nil {
		return nil, &RequestError{Code: http.StatusBadRequest, Msg: "AdmissionReview has no request"}
	}
	if review.Request.UID == "" {
		return nil, &RequestError{Code: http.StatusBadRequest, Msg: "AdmissionReview request has no uid"}
	}
	return &review, nil
}
