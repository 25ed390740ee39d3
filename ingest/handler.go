package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"

	"golang.org/x/time/rate"

	"buildguard.dev/buildguard/evidence"
)

// Defaults of Handler's fields.
const (
	DefaultMaxBodyBytes = 4 << 20
	DefaultRate         = 20 // requests per second per reporter
	DefaultBurst        = 40
	maxLimiters         = 10000
)

// Writer stores reports. evidence.Store is one.
type Writer interface {
	AddReport(ctx context.Context, r evidence.Report) (builds, conns int, err error)
}

// Format parses one kind of report body; node is the reporting node
// when the body does not say.
type Format func(body []byte, node string) (evidence.Parsed, error)

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
	// Rate and Burst limit each reporter's requests. The defaults are
	// DefaultRate per second and DefaultBurst.
	Rate  rate.Limit
	Burst int
	// OnReport, when set, is told of every stored report, after it is
	// stored (late evidence is judged there).
	OnReport func(ctx context.Context, r evidence.Report)
	// Log is the logger. The default discards.
	Log *slog.Logger

	mu       sync.Mutex
	limiters map[string]*rate.Limiter
}

// Formats are the report formats by path.
func Formats() map[string]Format {
	return map[string]Format{
		"/v1/node-reports":          func(b []byte, _ string) (evidence.Parsed, error) { return evidence.ParseAgent(b) },
		"/v1/node-reports/falco":    func(b []byte, node string) (evidence.Parsed, error) { return evidence.ParseFalco(b, node) },
		"/v1/node-reports/tetragon": func(b []byte, node string) (evidence.Parsed, error) { return evidence.ParseTetragon(b, node) },
		"/v1/node-reports/docker":   func(b []byte, node string) (evidence.Parsed, error) { return evidence.ParseDocker(b, node) },
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
	Duplicates int                  `json:"duplicates"`
	Ignored    int                  `json:"ignored"`
	Errors     []evidence.ItemError `json:"errors,omitempty"`
}

func (h *Handler) log() *slog.Logger {
	if h.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Log
}

func fail(w http.ResponseWriter, code int, format string, args ...any) {
	http.Error(w, fmt.Sprintf(format, args...), code)
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
		var ae *AuthError
		if errors.As(err, &ae) {
			fail(w, ae.Code, "%s", ae.Msg)
			return
		}
		h.log().Error("authenticating a reporter failed", "error", err)
		fail(w, http.StatusServiceUnavailable, "cannot authenticate now: %v", err)
		return
	}
	if !h.limiter(id.User).Allow() {
		w.Header().Set("Retry-After", "1")
		fail(w, http.StatusTooManyRequests, "too many reports from %s; retry later", id.User)
		return
	}
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
	node := id.Node
	if node == "" {
		node = r.URL.Query().Get("node")
	}
	p, err := parse(body, node)
	if err != nil {
		fail(w, http.StatusBadRequest, "%v", err)
		return
	}
	rep := p.Report
	// The token's node claim is the truth; the body's word is not.
	if id.Node != "" {
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
			fail(w, http.StatusBadRequest, "the report names no node: set it in the body or ?node=, or use a token bound to a pod")
			return
		}
	}
	for _, c := range rep.Connections {
		if c.Node == "" {
			fail(w, http.StatusBadRequest, "the report names no node: set it in the body or ?node=, or use a token bound to a pod")
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
	h.log().Info("node report", "node", rep.Node, "user", id.User, "path", r.URL.Path,
		"builds", res.Accepted.Builds, "connections", res.Accepted.Connections, "duplicates", res.Duplicates, "errors", len(res.Errors))
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(res)
}

func (h *Handler) limiter(user string) *rate.Limiter {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.limiters == nil || len(h.limiters) >= maxLimiters {
		h.limiters = map[string]*rate.Limiter{}
	}
	l, ok := h.limiters[user]
	if !ok {
		r, b := h.Rate, h.Burst
		if r <= 0 {
			r = DefaultRate
		}
		if b <= 0 {
			b = DefaultBurst
		}
		l = rate.NewLimiter(r, b)
		h.limiters[user] = l
	}
	return l
}
