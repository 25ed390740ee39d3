package review

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/google/go-containerregistry/pkg/name"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/kubeauth"
	"buildguard.dev/buildguard/policysource"
	"buildguard.dev/buildguard/records"
)

var urlQueryEscape = url.QueryEscape

func parseTemplates() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"time": showTime,
		"join": strings.Join,
		// segment escapes a decision ID as one path segment: the IDs of
		// audit scans' records hold a slash ("<uid>/scan-…"), which
		// html/template would leave as is.
		"segment": url.PathEscape,
		"short": func(id string) string {
			if len(id) > 8 {
				return id[:8]
			}
			return id
		},
		"rfc3339":   func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"compact":   compactTime,
		"args":      func(v ...any) []any { return v },
		"toneWord":  toneWord,
		"exportMax": func() string { return "100,000" },
	}
	base, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/parts.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, p := range []string{"login", "overview", "list", "detail", "image", "exceptions", "error"} {
		t, err := template.Must(base.Clone()).ParseFS(files, "templates/"+p+".html")
		if err != nil {
			return nil, err
		}
		pages[p] = t
	}
	return pages, nil
}

// page is what every page's layout reads.
type page struct {
	Title string
	// Nav is the part of the site the page belongs to: overview,
	// decisions or exceptions.
	Nav  string
	User *User
	CSRF string
	Data any
}

// navOf is the part of the site of each page.
var navOf = map[string]string{"overview": "overview", "list": "decisions", "detail": "decisions", "image": "decisions", "exceptions": "exceptions"}

// render writes a page with its status; a template that fails is our
// fault and a 500, never half a page.
func (h *Handler) render(w http.ResponseWriter, status int, name string, s *session, title string, data any) {
	p := page{Title: title, Nav: navOf[name], Data: data}
	if s != nil {
		p.User, p.CSRF = &s.User, s.CSRF
	}
	var b bytes.Buffer
	if err := h.pages[name].ExecuteTemplate(&b, "layout.html", p); err != nil {
		h.c.Log.Error("review page not rendered", "page", name, "error", err)
		http.Error(w, "internal error rendering the page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b.Bytes())
}

func (h *Handler) fail(w http.ResponseWriter, _ *http.Request, s *session, status int, msg string) {
	h.render(w, status, "error", s, http.StatusText(status), msg)
}

// --- login and logout

type loginData struct {
	Next  string
	Error string
}

// localPath returns next if it is a path on this site, else "/".
func localPath(next string) string {
	u, err := url.Parse(next)
	if err != nil || next == "" || !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") ||
		strings.HasPrefix(next, "/\\") || u.Scheme != "" || u.Host != "" {
		return "/"
	}
	return next
}

func (h *Handler) loginPage(w http.ResponseWriter, r *http.Request) {
	if h.session(r) != nil {
		http.Redirect(w, r, localPath(r.URL.Query().Get("next")), http.StatusSeeOther)
		return
	}
	h.render(w, http.StatusOK, "login", nil, "Log in", loginData{Next: localPath(r.URL.Query().Get("next"))})
}

// maxTokenLen bounds a login token; Kubernetes tokens are a few KiB.
const maxTokenLen = 16 << 10

func (h *Handler) login(w http.ResponseWriter, r *http.Request) {
	next := localPath(r.PostFormValue("next"))
	again := func(status int, msg string) {
		h.render(w, status, "login", nil, "Log in", loginData{Next: next, Error: msg})
	}
	token := strings.TrimSpace(r.PostFormValue("token"))
	switch {
	case token == "":
		again(http.StatusBadRequest, "Paste a bearer token.")
		return
	case len(token) > maxTokenLen:
		again(http.StatusBadRequest, fmt.Sprintf("The token is longer than %d bytes.", maxTokenLen))
		return
	}
	client := clientKey(r.RemoteAddr)
	if until, blocked := h.limiter.blocked(client, h.c.Clock.Now()); blocked {
		wait := max(until.Sub(h.c.Clock.Now()), time.Second).Round(time.Second)
		h.c.Log.Warn("review login refused: too many failed logins", "client", client)
		w.Header().Set("Retry-After", strconv.Itoa(int(wait/time.Second)))
		again(http.StatusTooManyRequests, fmt.Sprintf("Too many failed logins from your address; try again in %s.", wait))
		return
	}
	select {
	case h.logins <- struct{}{}:
		defer func() { <-h.logins }()
	default:
		again(http.StatusServiceUnavailable, "Too many logins at once; try again in a moment.")
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	u, err := h.c.Authenticator.Authenticate(ctx, token)
	var ae *kubeauth.Error
	switch {
	case errors.As(err, &ae):
		h.limiter.fail(client, h.c.Clock.Now())
		h.c.Log.Info("review login refused", "reason", ae.Reason, "client", client)
		again(http.StatusUnauthorized, "The token was not accepted: "+ae.Reason)
		return
	case err != nil:
		h.c.Log.Warn("review login not checked", "error", err)
		again(http.StatusBadGateway, "The token could not be checked; try again later.")
		return
	}
	now := h.c.Clock.Now()
	s, err := newSession(h.c.Random, u, now.Add(h.c.SessionTTL))
	if err != nil {
		again(http.StatusInternalServerError, "No session could be created.")
		return
	}
	v, err := h.codec.encode(s)
	if err != nil {
		again(http.StatusBadRequest, "Logged in as "+u.Name+", but "+err.Error()+".")
		return
	}
	h.c.Log.Info("review login", "user", u.Name)
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: v, Path: "/", Expires: now.Add(h.c.SessionTTL), MaxAge: int(h.c.SessionTTL / time.Second),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode,
	})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (h *Handler) logout(w http.ResponseWriter, r *http.Request) {
	s := h.session(r)
	if s != nil && !checkCSRF(r, s) {
		h.fail(w, r, s, http.StatusForbidden, "Refused: the form's token does not match your session. Reload the page and try again.")
		return
	}
	if s != nil {
		h.revoked.revoke(*s, h.c.Clock.Now())
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

func (h *Handler) authzFailed(w http.ResponseWriter, r *http.Request, s *session, err error) {
	h.c.Log.Warn("review: authorization not checked", "user", s.User.Name, "error", err)
	h.fail(w, r, s, http.StatusBadGateway, "Your permissions could not be checked; try again later.")
}

// --- the detail page

type detailData struct {
	D        evidence.Decision
	Timeline []Event
	Images   []imageView
	Workload *records.ImageRecord
	Raw      string
	// ImagesError is set when the recorded images cannot be read.
	ImagesError string
	CanGrant    bool
	GrantOff    string
	Granted     string
	// Form holds the values of a grant that was refused, and why.
	Form     grantForm
	MaxDays  int
	Now      time.Time
	Defaults string // the expiry the form suggests
}

type imageView struct {
	records.ImageRecord
	// Ref is repo@digest, what a grant covers; empty without a digest.
	Ref      string
	Findings []findingView
}

type findingView struct {
	records.FindingRecord
	Evidence [][2]string
}

type grantForm struct {
	Ref, Reason, Expires, Error string
}

// loadDecision returns the decision of the request's path if the user may
// see it; otherwise it has answered and returns false. A decision the
// user may not see is "not found", as one that does not exist.
func (h *Handler) loadDecision(w http.ResponseWriter, r *http.Request, s *session) (evidence.Decision, bool) {
	id := r.PathValue("id")
	notFound := func() {
		h.fail(w, r, s, http.StatusNotFound, fmt.Sprintf("There is no decision %q that you may see.", shorten.Text(id, 80)))
	}
	if id == "" || len(id) > 256 || !utf8.ValidString(id) {
		notFound()
		return evidence.Decision{}, false
	}
	ctx, cancel := h.ctx(r)
	d, err := h.c.Store.Decision(ctx, id)
	cancel()
	switch {
	case errors.Is(err, evidence.ErrNotFound):
		notFound()
		return d, false
	case err != nil:
		h.c.Log.Error("review: decision not read", "uid", id, "error", err)
		h.fail(w, r, s, http.StatusServiceUnavailable, "The decision store did not answer; try again later.")
		return d, false
	}
	ok, err := h.allowed(r, s, listDecisions(d.Namespace))
	if err != nil {
		h.authzFailed(w, r, s, err)
		return d, false
	}
	if !ok {
		notFound()
		return d, false
	}
	return d, true
}

func (h *Handler) detail(w http.ResponseWriter, r *http.Request, s *session) {
	d, ok := h.loadDecision(w, r, s)
	if !ok {
		return
	}
	data, ok := h.detailData(w, r, s, d)
	if !ok {
		return
	}
	q := r.URL.Query()
	if g := q.Get("granted"); g != "" && len(g) <= 253 && namespacedNameRE.MatchString(g) && h.codec.checkGranted(s, d.ID, g, q.Get("sig")) {
		data.Granted = g
	}
	h.render(w, http.StatusOK, "detail", s, "Decision "+shortID(d.ID), data)
}

var namespacedNameRE = regexp.MustCompile(`^[a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*$`)

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

func (h *Handler) detailData(w http.ResponseWriter, r *http.Request, s *session, d evidence.Decision) (detailData, bool) {
	now := h.c.Clock.Now()
	data := detailData{D: d, Now: now, MaxDays: int(h.c.MaxException / (24 * time.Hour)),
		Defaults: now.Add(min(7*24*time.Hour, h.c.MaxException)).UTC().Format("2006-01-02T15:04")}
	raw, err := json.MarshalIndent(records.ToJSON(d), "", "  ")
	if err != nil {
		data.Raw = string(d.Images)
	} else {
		data.Raw = string(raw)
	}
	images, err := records.ParseImages(d.Images)
	if err != nil {
		data.ImagesError = err.Error()
	}
	data.Timeline = Timeline(d, images)
	for _, im := range images {
		if im.Scope == records.ScopeWorkload {
			im := im
			data.Workload = &im
			continue
		}
		v := imageView{ImageRecord: im, Ref: grantRef(im)}
		for _, f := range im.Findings {
			fv := findingView{FindingRecord: f}
			for _, k := range sortedKeys(f.Evidence) {
				fv.Evidence = append(fv.Evidence, [2]string{k, str(f.Evidence[k])})
			}
			v.Findings = append(v.Findings, fv)
		}
		data.Images = append(data.Images, v)
	}
	if h.c.Granter == nil {
		data.GrantOff = h.c.GrantOff
		return data, true
	}
	if d.Namespace == "" {
		data.GrantOff = "the decision has no namespace, and exceptions are namespaced"
		return data, true
	}
	ok, err := h.allowed(r, s, createExceptions(d.Namespace))
	if err != nil {
		h.authzFailed(w, r, s, err)
		return data, false
	}
	data.CanGrant = ok
	return data, true
}

// grantRef is the digest reference a grant for im covers: its repository,
// as policy exceptions compare it, and its digest.
func grantRef(im records.ImageRecord) string {
	if im.Digest == "" || im.Image == "" {
		return ""
	}
	ref, err := name.ParseReference(im.Image)
	if err != nil {
		return ""
	}
	d, err := name.NewDigest(ref.Context().Name() + "@" + im.Digest)
	if err != nil {
		return ""
	}
	return d.String()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (h *Handler) raw(w http.ResponseWriter, r *http.Request, s *session) {
	d, ok := h.loadDecision(w, r, s)
	if !ok {
		return
	}
	b, err := json.MarshalIndent(records.ToJSON(d), "", "  ")
	if err != nil {
		h.fail(w, r, s, http.StatusInternalServerError, "The decision could not be encoded: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Disposition", "inline")
	w.Write(append(b, '\n'))
}

// --- granting

const maxReason = 500

// parseExpiry reads the form's expiry: datetime-local (in UTC), with or
// without seconds, or RFC 3339.
func parseExpiry(s string) (time.Time, error) {
	for _, layout := range []string{"2006-01-02T15:04", "2006-01-02T15:04:05", time.RFC3339} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("expiry %q: want a UTC date and time such as 2026-12-09T17:00", shorten.Text(s, 40))
}

func (h *Handler) grant(w http.ResponseWriter, r *http.Request, s *session) {
	if !checkCSRF(r, s) {
		h.fail(w, r, s, http.StatusForbidden, "Refused: the form's token does not match your session. Reload the page and try again.")
		return
	}
	d, ok := h.loadDecision(w, r, s)
	if !ok {
		return
	}
	if h.c.Granter == nil || d.Namespace == "" {
		h.fail(w, r, s, http.StatusForbidden, "No exception can be granted for this decision: granting is off, or the decision has no namespace.")
		return
	}
	ok, err := h.allowed(r, s, createExceptions(d.Namespace))
	if err != nil {
		h.authzFailed(w, r, s, err)
		return
	}
	if !ok {
		h.c.Log.Warn("review: grant refused", "user", s.User.Name, "namespace", d.Namespace, "uid", d.ID)
		h.fail(w, r, s, http.StatusForbidden, fmt.Sprintf("You (%s) may not create buildpolicyexceptions in namespace %s.", s.User.Name, d.Namespace))
		return
	}
	form := grantForm{Ref: r.PostFormValue("image"), Reason: strings.TrimSpace(r.PostFormValue("reason")), Expires: strings.TrimSpace(r.PostFormValue("expires"))}
	data, ok := h.detailData(w, r, s, d)
	if !ok {
		return
	}
	refuse := func(msg string) {
		form.Error = msg
		data.Form = form
		h.render(w, http.StatusBadRequest, "detail", s, "Decision "+shortID(d.ID), data)
	}
	known := false
	for _, im := range data.Images {
		known = known || (im.Ref != "" && im.Ref == form.Ref)
	}
	if !known {
		refuse(fmt.Sprintf("The image %q is not a digest of this decision.", shorten.Text(form.Ref, 200)))
		return
	}
	now := h.c.Clock.Now()
	expires, err := parseExpiry(form.Expires)
	switch {
	case form.Reason == "":
		refuse("A reason is required: a ticket or a sentence.")
		return
	case utf8.RuneCountInString(form.Reason) > maxReason || !utf8.ValidString(form.Reason) || strings.ContainsFunc(form.Reason, unicode.IsControl):
		refuse(fmt.Sprintf("The reason must be printable text of at most %d characters.", maxReason))
		return
	case form.Expires == "":
		refuse("An expiry is required.")
		return
	case err != nil:
		refuse(err.Error())
		return
	case !expires.After(now):
		refuse("The expiry must be in the future.")
		return
	case expires.Sub(now) > h.c.MaxException:
		refuse(fmt.Sprintf("The expiry may be at most %s away (%s).", human(h.c.MaxException), showTime(now.Add(h.c.MaxException))))
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	g := policysource.Grant{Namespace: d.Namespace, Image: form.Ref, Reason: form.Reason, Expires: expires, GrantedBy: s.User.Name, At: now, DecisionID: d.ID}
	got, err := h.c.Granter.Grant(ctx, g)
	if err != nil {
		h.c.Log.Error("review: exception not granted", "namespace", d.Namespace, "digest", form.Ref, "uid", d.ID, "user", s.User.Name, "error", err)
		h.fail(w, r, s, http.StatusBadGateway, "The exception could not be stored: "+err.Error())
		return
	}
	h.c.Log.Info("review: exception granted", "exception", got, "namespace", d.Namespace, "digest", form.Ref, "uid", d.ID,
		"user", s.User.Name, "expires", expires.Format(time.RFC3339))
	// The confirmation is signed for this session, so that a link made
	// elsewhere cannot tell a reviewer that an exception was granted.
	http.Redirect(w, r, "/decisions/"+url.PathEscape(d.ID)+"?granted="+url.QueryEscape(got)+"&sig="+h.codec.granted(s, d.ID, got), http.StatusSeeOther)
}

// human writes a duration in days when it is whole days.
func human(d time.Duration) string {
	if d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%d days", d/(24*time.Hour))
	}
	return d.String()
}

// compactTime is a time for a list's narrow column, in UTC: the time of
// day for today, the day and time this year, the date before.
func compactTime(t, now time.Time) string {
	t, now = t.UTC(), now.UTC()
	switch {
	case t.Year() == now.Year() && t.YearDay() == now.YearDay():
		return t.Format("15:04:05")
	case t.Year() == now.Year():
		return t.Format("Jan 2 15:04")
	}
	return t.Format("2006-01-02")
}

// toneWord says a timeline tone in words, for those who do not see its
// colour.
func toneWord(tone string) string {
	switch tone {
	case ToneBad:
		return "Objection"
	case ToneWarn:
		return "Warning"
	case ToneOK:
		return "Passed"
	}
	return "Fact"
}
