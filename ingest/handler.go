package ingest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/logger"
	"buildguard.dev/buildguard/kubeauth"
	"buildguard.dev/buildguard/nodereport"
)

// Defaults of Handler's fields.
const (
	DefaultMaxBodyBytes = 4 << 20
	// DefaultRate and DefaultBurst limit the requests of each node (of a
	// reporter whose token is bound to a node): the node agent sends a
	// batch every few seconds.
	DefaultRate  = 20 // per second
	DefaultBurst = 40
	// DefaultForwarderRate and DefaultForwarderBurst limit the requests
	// of each forwarder, which reports for many nodes.
	DefaultForwarderRate  = 200 // per second
	DefaultForwarderBurst = 400
	// DefaultMaxInFlight is how many requests of one node, or one
	// forwarder, are handled at once; more are answered 429.
	DefaultMaxInFlight          = 2
	DefaultForwarderMaxInFlight = 16
	maxLimiters                 = 65536
)

// Writer stores reports. evidence.Store is one.
type Writer interface {
	AddReport(ctx context.Context, r evidence.Report) (builds, conns int, err error)
}

// Format parses one kind of report body; node is the reporting node
// when the body does not say.
type Format func(body []byte, node string) (nodereport.Parsed, error)

// Handler serves the node-report endpoints:
//
//	POST /v1/node-reports           buildguard's own JSON (the node agent's)
//	POST /v1/node-reports/falco     Falco alerts, falcosidekick payloads
//	POST /v1/node-reports/tetragon  Tetragon export, newline-delimited
//	POST /v1/node-reports/docker    Docker Engine /events messages
type Handler struct {
	// Store keeps what is accepted. Required.
	Store Writer
	// Auth authenticates reporters. Required.
	Auth Authenticator
	// Formats maps a path to its parser. Required; see Formats.
	Formats map[string]Format
	// MaxBodyBytes caps a body. The default is DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// Rate and Burst limit each node's requests, and MaxInFlight how many
	// of them are handled at once, so that a node that floods is refused
	// alone. The defaults are DefaultRate per second, DefaultBurst and
	// DefaultMaxInFlight.
	Rate        rate.Limit
	Burst       int
	MaxInFlight int
	// ForwarderRate, ForwarderBurst and ForwarderMaxInFlight are the same
	// for each forwarder (Identity.Forwarder). The defaults are
	// DefaultForwarderRate per second, DefaultForwarderBurst and
	// DefaultForwarderMaxInFlight.
	ForwarderRate        rate.Limit
	ForwarderBurst       int
	ForwarderMaxInFlight int
	// OnReport, when set, is told of every stored report, after it is
	// stored (late evidence is judged there).
	OnReport func(ctx context.Context, r evidence.Report)
	// Metrics counts the requests by format and status code, when set.
	Metrics *Metrics
	// Log is the logger. The default discards.
	Log *slog.Logger

	mu       sync.Mutex
	limiters map[string]*limiter
}

// limiter is the budget of one node or forwarder.
type limiter struct {
	rate     *rate.Limiter
	burst    int
	inFlight int
}

// Formats are the report formats by path.
func Formats() map[string]Format {
	return map[string]Format{
		"/v1/node-reports":          func(b []byte, _ string) (nodereport.Parsed, error) { return nodereport.ParseAgent(b) },
		"/v1/node-reports/falco":    func(b []byte, node string) (nodereport.Parsed, error) { return nodereport.ParseFalco(b, node) },
		"/v1/node-reports/tetragon": func(b []byte, node string) (nodereport.Parsed, error) { return nodereport.ParseTetragon(b, node) },
		"/v1/node-reports/docker":   func(b []byte, node string) (nodereport.Parsed, error) { return nodereport.ParseDocker(b, node) },
	}
}

// Result is the answer to a report.
type Result struct {
	Node     string `json:"node"`
	Accepted struct {
		Builds      int `json:"builds"`
		Connections int `json:"connections"`
	} `json:"accepted"`
	// Duplicates were stored before (a retried batch).
	Duplicates int                    `json:"duplicates"`
	Ignored    int                    `json:"ignored"`
	Errors     []nodereport.ItemError `json:"errors,omitempty"`
}

func (h *Handler) log() *slog.Logger {
	return logger.OrDiscard(h.Log)
}

func fail(w http.ResponseWriter, code int, format string, args ...any) {
	http.Error(w, fmt.Sprintf(format, args...), code)
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.Metrics == nil {
		h.serve(w, r)
		return
	}
	sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
	h.serve(sw, r)
	h.Metrics.reports.WithLabelValues(formatName(h.Formats, r.URL.Path), strconv.Itoa(sw.code)).Inc()
}

func (h *Handler) serve(w http.ResponseWriter, r *http.Request) {
	parse, ok := h.Formats[r.URL.Path]
	if !ok {
		fail(w, http.StatusNotFound, "no report format at %s", r.URL.Path)
		return
	}
	if r.Method != http.MethodPost {
		fail(w, http.StatusMethodNotAllowed, "use POST")
		return
	}
	token, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	id, err := h.Auth.Authenticate(r.Context(), strings.TrimSpace(token))
	if err != nil {
		var ae *kubeauth.Error
		if errors.As(err, &ae) {
			fail(w, ae.Code, "%s", ae.Reason)
			return
		}
		h.log().Error("authenticating a reporter failed", "error", err)
		fail(w, http.StatusServiceUnavailable, "cannot authenticate now: %v", err)
		return
	}
	if id.Node == "" && !id.Forwarder {
		// An Authenticator must not let such a reporter through; if one
		// does, it could name any node.
		fail(w, http.StatusForbidden, "%s's token is bound to no node, and %[1]s is not a forwarder", id.User)
		return
	}
	release, ok := h.admit(id)
	if !ok {
		w.Header().Set("Retry-After", "1")
		if id.Forwarder {
			fail(w, http.StatusTooManyRequests, "too many reports from %s; retry later", id.User)
		} else {
			fail(w, http.StatusTooManyRequests, "too many reports from node %s; retry later", id.Node)
		}
		return
	}
	defer release()
	limit := h.MaxBodyBytes
	if limit <= 0 {
		limit = DefaultMaxBodyBytes
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			fail(w, http.StatusRequestEntityTooLarge, "body larger than %d bytes: send smaller batches", limit)
			return
		}
		fail(w, http.StatusBadRequest, "reading body: %v", err)
		return
	}
	// A forwarder's reports say which node each item is from (or ?node=
	// does); its own token's node, where it runs, is not theirs. Anyone
	// else reports for the node its token is bound to, whatever the body
	// says.
	node := id.Node
	if id.Forwarder {
		node = r.URL.Query().Get("node")
	}
	p, err := parse(body, node)
	if err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	rep := p.Report
	rep.Reporter = id.User
	if !id.Forwarder {
		rep.Node = id.Node
		for i := range rep.Builds {
			rep.Builds[i].Node = id.Node
		}
		for i := range rep.Connections {
			rep.Connections[i].Node = id.Node
		}
	}
	var res Result
	res.Node, res.Ignored, res.Errors = rep.Node, p.Ignored, p.Errors
	items := len(rep.Builds) + len(rep.Connections)
	if items == 0 && len(p.Errors) > 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(res)
		return
	}
	for _, b := range rep.Builds {
		if b.Node == "" {
			fail(w, http.StatusBadRequest, "the report names no node: a forwarder sets it in the body or ?node=")
			return
		}
	}
	for _, c := range rep.Connections {
		if c.Node == "" {
			fail(w, http.StatusBadRequest, "the report names no node: a forwarder sets it in the body or ?node=")
			return
		}
	}
	if items > 0 {
		nb, nc, err := h.Store.AddReport(r.Context(), rep)
		var ie *evidence.InvalidError
		if errors.As(err, &ie) {
			// The report's fault: retrying it would fail again.
			fail(w, http.StatusBadRequest, "report refused: %v", err)
			return
		}
		if err != nil {
			h.log().Error("storing a node report failed", "node", rep.Node, "error", err)
			fail(w, http.StatusServiceUnavailable, "cannot store the report now: %v; retry", err)
			return
		}
		res.Accepted.Builds, res.Accepted.Connections = nb, nc
		res.Duplicates = items - nb - nc
		if h.OnReport != nil && nb+nc > 0 { // a late connection is late evidence too
			h.OnReport(context.WithoutCancel(r.Context()), rep)
		}
	}
	// A fleet reports hundreds of times a second: a report that brought
	// no build is logged at debug level only.
	level := slog.LevelDebug
	if res.Accepted.Builds > 0 {
		level = slog.LevelInfo
	}
	h.log().Log(r.Context(), level, "node report", "node", rep.Node, "user", id.User, "forwarder", id.Forwarder, "path", r.URL.Path,
		"builds", res.Accepted.Builds, "connections", res.Accepted.Connections, "duplicates", res.Duplicates, "errors", len(res.Errors))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(res)
}

// admit takes a request of id's node, or of the forwarder id, out of its
// budget: its rate and its requests in flight. release ends the request.
func (h *Handler) admit(id Identity) (release func(), ok bool) {
	key, r, b, n := "node:"+id.Node, h.Rate, h.Burst, h.MaxInFlight
	r, b, n = cmp.Or(r, DefaultRate), cmp.Or(b, DefaultBurst), cmp.Or(n, DefaultMaxInFlight)
	if id.Forwarder {
		key, r, b, n = "forwarder:"+id.User, h.ForwarderRate, h.ForwarderBurst, h.ForwarderMaxInFlight
		r, b, n = cmp.Or(r, DefaultForwarderRate), cmp.Or(b, DefaultForwarderBurst), cmp.Or(n, DefaultForwarderMaxInFlight)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	l, found := h.limiters[key]
	if !found {
		if len(h.limiters) >= maxLimiters {
			h.sweep()
		}
		if h.limiters == nil {
			h.limiters = map[string]*limiter{}
		}
		l = &limiter{rate: rate.NewLimiter(r, b), burst: b}
		h.limiters[key] = l
	}
	if l.inFlight >= n || !l.rate.Allow() {
		return nil, false
	}
	l.inFlight++
	return func() {
		h.mu.Lock()
		l.inFlight--
		h.mu.Unlock()
	}, true
}

// sweep forgets idle budgets (nothing in flight, bucket full), which are
// as good as new ones; if none is idle, it forgets all. Called with h.mu
// held.
func (h *Handler) sweep() {
	for k, l := range h.limiters {
		if l.inFlight == 0 && l.rate.Tokens() >= float64(l.burst) {
			delete(h.limiters, k)
		}
	}
	if len(h.limiters) >= maxLimiters {
		h.limiters = nil
	}
}

// Metrics are the node-report endpoints' metrics.
type Metrics struct {
	reports *prometheus.CounterVec
}

// NewMetrics registers buildguard_node_reports_total{format,code} on reg:
// requests to the node-report endpoints by format (buildguard, falco,
// tetragon, docker; none for another path) and HTTP status code, 200
// for a report accepted. The accepted series of each format of formats
// start at 0.
func NewMetrics(reg prometheus.Registerer, formats map[string]Format) (*Metrics, error) {
	m := &Metrics{reports: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "buildguard_node_reports_total",
		Help: "Requests to the node-report endpoints, by format and HTTP status code: 200 accepted; 401 and 403 refused tokens, 413 too large, 400 invalid, 429 over the node's rate, 503 store or TokenReview unavailable.",
	}, []string{"format", "code"})}
	if err := reg.Register(m.reports); err != nil {
		return nil, fmt.Errorf("node report metrics: %w", err)
	}
	for path := range formats {
		m.reports.WithLabelValues(formatName(formats, path), "200")
	}
	return m, nil
}

// formatName is the format a path is for: the last element of its path
// under /v1/node-reports, buildguard for that path itself.
func formatName(formats map[string]Format, path string) string {
	if _, ok := formats[path]; !ok {
		return "none"
	}
	name, _ := strings.CutPrefix(path, "/v1/node-reports")
	return cmp.Or(strings.TrimPrefix(name, "/"), "buildguard")
}

// statusWriter remembers the status code written.
type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}
