package review

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"k8s.io/apimachinery/pkg/util/duration"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/records"
)

// Verdicts a list may filter on; the default is the denials.
var (
	allVerdicts     = []string{records.VerdictDeny, records.VerdictWouldDeny, records.VerdictWarn, records.VerdictAllow}
	defaultVerdicts = []string{records.VerdictDeny, records.VerdictWouldDeny}
)

// defaultSince is the list's time filter when none is given; the form shows it as "24h".
const defaultSince = 24 * time.Hour

var (
	namespaceRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
	ruleRE      = regexp.MustCompile(`^[a-z0-9][-a-z0-9]{0,62}$`)
	kindRE      = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9]{0,62}$`)
	nameRE      = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)
	scanRE      = regexp.MustCompile(`^scan-[0-9]{8}T[0-9]{6}Z$`)
	dayRE       = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}$`)
)

// Filter is the list's query, as its form and URL carry it.
type Filter struct {
	Since     string
	Day       string // a UTC day, 2006-01-02; it replaces Since
	Namespace string
	Kind      string
	Name      string
	Rule      string
	Image     string
	Scan      string
	Exception string
	Verdicts  []string
	Limit     int
	// Before and After are the page's cursor (encodeCursor); Page is
	// its number, for the reader.
	Before, After string
	Page          int
}

// Has reports whether v is among the filter's verdicts (for checkboxes).
func (f Filter) Has(v string) bool { return slices.Contains(f.Verdicts, v) }

// Query is the filter as URL parameters, without its page: what links to
// its first page, its export and its other pages start from. Defaults
// are left out.
func (f Filter) Query() url.Values {
	q := url.Values{}
	set := func(k, v string) {
		if v != "" {
			q.Set(k, v)
		}
	}
	if f.Day != "" {
		set("day", f.Day)
	} else if f.Since != "24h" {
		set("since", f.Since)
	}
	set("namespace", f.Namespace)
	set("kind", f.Kind)
	set("name", f.Name)
	set("rule", f.Rule)
	set("image", f.Image)
	set("scan", f.Scan)
	set("exception", f.Exception)
	if !slices.Equal(f.Verdicts, defaultVerdicts) {
		q["verdict"] = slices.Clone(f.Verdicts)
	}
	if f.Limit != defaultListLimit {
		set("limit", strconv.Itoa(f.Limit))
	}
	return q
}

// Link is the URL of the filter's list at path with extra parameters.
func (f Filter) Link(path string, extra ...string) string {
	q := f.Query()
	for i := 0; i+1 < len(extra); i += 2 {
		q.Set(extra[i], extra[i+1])
	}
	if len(q) == 0 {
		return path
	}
	return path + "?" + q.Encode()
}

// maxListLimit is the most rows a list page shows, and the most
// decisions it reads from the store (the store's own maximum).
const (
	maxListLimit     = 1000
	defaultListLimit = 100
	maxPage          = 1_000_000
)

// parseFilter reads the list's query parameters; an error is the user's.
func parseFilter(q url.Values, now time.Time) (Filter, evidence.DecisionQuery, error) {
	get := func(k string) string { return strings.TrimSpace(q.Get(k)) }
	f := Filter{Since: get("since"), Day: get("day"), Namespace: get("namespace"), Kind: get("kind"), Name: get("name"),
		Rule: get("rule"), Image: get("image"), Scan: get("scan"), Exception: get("exception"), Limit: defaultListLimit, Page: 1}
	var dq evidence.DecisionQuery
	switch f.Since {
	case "":
		f.Since = "24h"
		dq.Since = now.Add(-defaultSince)
	case "all", "0":
		f.Since = "all"
	default:
		if t, err := time.Parse(time.DateOnly, f.Since); err == nil && dayRE.MatchString(f.Since) {
			dq.Since = t // the start of a UTC day
			break
		}
		d, err := parseSince(f.Since)
		if err != nil {
			return f, dq, err
		}
		dq.Since = now.Add(-d)
	}
	if f.Day != "" {
		t, err := time.Parse(time.DateOnly, f.Day)
		if err != nil || !dayRE.MatchString(f.Day) {
			return f, dq, fmt.Errorf("day %q: want a UTC date such as 2026-12-01", shorten.Text(f.Day, 20))
		}
		f.Since, dq.Since, dq.Until = "all", t, t.Add(24*time.Hour)
	}
	for _, c := range []struct {
		name, v string
		re      *regexp.Regexp
		want    string
	}{
		{"namespace", f.Namespace, namespaceRE, "is not a namespace name"},
		{"kind", f.Kind, kindRE, "is not a kind (such as Deployment)"},
		{"name", f.Name, nameRE, "is not a workload name"},
		{"rule", f.Rule, ruleRE, "is not a rule ID (such as fresh-image)"},
		{"scan", f.Scan, scanRE, "is not an audit scan's name (such as scan-20261202T031500Z)"},
	} {
		if c.v != "" && !c.re.MatchString(c.v) {
			return f, dq, fmt.Errorf("%s %q %s", c.name, shorten.Text(c.v, 80), c.want)
		}
	}
	if len(f.Image) > 512 || !utf8.ValidString(f.Image) || strings.ContainsFunc(f.Image, unicode.IsControl) {
		return f, dq, errors.New("the image pattern is longer than 512 characters or not printable text")
	}
	if len(f.Exception) > 320 || !utf8.ValidString(f.Exception) || strings.ContainsFunc(f.Exception, unicode.IsControl) {
		return f, dq, errors.New("the exception's name is longer than 320 characters or not printable text")
	}
	for _, v := range q["verdict"] {
		if !slices.Contains(allVerdicts, v) {
			return f, dq, fmt.Errorf("verdict %q: want one of %s", shorten.Text(v, 40), strings.Join(allVerdicts, ", "))
		}
		if !slices.Contains(f.Verdicts, v) {
			f.Verdicts = append(f.Verdicts, v)
		}
	}
	if len(f.Verdicts) == 0 {
		f.Verdicts = slices.Clone(defaultVerdicts)
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > maxListLimit {
			return f, dq, fmt.Errorf("limit %q: want a number from 1 to 1000", shorten.Text(l, 20))
		}
		f.Limit = n
	}
	if p := q.Get("page"); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > maxPage {
			return f, dq, fmt.Errorf("page %q: want a number from 1", shorten.Text(p, 20))
		}
		f.Page = n
	}
	f.Before, f.After = q.Get("before"), q.Get("after")
	switch {
	case f.Before != "" && f.After != "":
		return f, dq, errors.New("before and after exclude each other")
	case f.Before != "":
		c, err := decodeCursor(f.Before)
		if err != nil {
			return f, dq, fmt.Errorf("before: %w", err)
		}
		dq.Before = c
	case f.After != "":
		c, err := decodeCursor(f.After)
		if err != nil {
			return f, dq, fmt.Errorf("after: %w", err)
		}
		dq.After = c
	}
	dq.Namespace, dq.Kind, dq.Name, dq.Rule, dq.ImageGlob, dq.Scan, dq.Exception, dq.Verdicts, dq.Limit =
		f.Namespace, f.Kind, f.Name, f.Rule, f.Image, f.Scan, f.Exception, f.Verdicts, f.Limit
	return f, dq, nil
}

// encodeCursor writes a page's cursor for a URL: the decision's time in
// microseconds since the epoch, "_", and its ID.
func encodeCursor(c *evidence.Cursor) string {
	return strconv.FormatInt(c.Time.UnixMicro(), 10) + "_" + c.ID
}

func decodeCursor(s string) (*evidence.Cursor, error) {
	us, id, ok := strings.Cut(s, "_")
	n, err := strconv.ParseInt(us, 10, 64)
	if !ok || err != nil || id == "" || len(id) > 256 || !utf8.ValidString(id) || n < 0 {
		return nil, fmt.Errorf("%q is not a page of this list; start again from its first page", shorten.Text(s, 40))
	}
	return &evidence.Cursor{Time: time.UnixMicro(n).UTC(), ID: id}, nil
}

// parseSince reads a Go duration or a number of days ("7d").
func parseSince(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(d)
		if err == nil && n > 0 && n <= 3650 {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	} else if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return d, nil
	}
	return 0, fmt.Errorf("since %q: want a duration such as 30m, 24h or 7d, a UTC date such as 2026-12-01, or all", shorten.Text(s, 40))
}

type listData struct {
	Filter   Filter
	Rules    []string
	Verdicts []string
	Rows     []listRow
	Error    string
	// Partial: the user may list decisions in some namespaces only.
	Partial bool
	Now     time.Time
	// Newer and Older link to the pages around this one; Newest to the
	// first.
	Newer, Older, Newest string
	// First and Last number the page's rows, counting from the newest.
	First, Last int
	// CSV and JSON export the filter.
	CSV, JSON string
	// Chips are the filters the form has no field for (a day, a
	// workload, an audit scan), each with a link without it.
	Chips []chip
}

type chip struct{ Label, Clear string }

type listRow struct {
	evidence.Decision
	Age    string
	Images []imageCell
}

// imageCell is an image of a list row: its reference, and its digest
// when it was resolved.
type imageCell struct {
	Ref, Digest string
}

// ruleIDs are the rule IDs a decision can carry, for the rule filter:
// the configurable rules, and those whose action the policy does not set
// (registry-unavailable, invalid-mode-label, implausible-build-time).
func ruleIDs() []string {
	var out []string
	for _, id := range append(policy.Rules(), policy.RuleRegistryUnavailable, policy.RuleInvalidModeLabel, policy.RuleImplausibleBuildTime) {
		if !slices.Contains(out, string(id)) {
			out = append(out, string(id))
		}
	}
	return out
}

func (h *Handler) list(w http.ResponseWriter, r *http.Request, s *session) {
	now := h.c.Clock.Now()
	f, q, err := parseFilter(r.URL.Query(), now)
	data := listData{Filter: f, Verdicts: allVerdicts, Now: now, Rules: ruleIDs()}
	if f.Rule != "" && !slices.Contains(data.Rules, f.Rule) {
		data.Rules = append(data.Rules, f.Rule) // of a newer version, say
	}
	without := func(mod func(*Filter)) string {
		g := f
		mod(&g)
		return g.Link("/decisions")
	}
	if f.Day != "" {
		data.Chips = append(data.Chips, chip{"on " + f.Day + " (UTC)", without(func(g *Filter) { g.Day, g.Since = "", "24h" })})
	}
	if f.Kind != "" || f.Name != "" {
		data.Chips = append(data.Chips, chip{"workload " + strings.TrimSpace(f.Kind+" "+f.Name), without(func(g *Filter) { g.Kind, g.Name = "", "" })})
	}
	if f.Scan != "" {
		data.Chips = append(data.Chips, chip{"audit scan " + f.Scan, without(func(g *Filter) { g.Scan = "" })})
	}
	if f.Exception != "" {
		data.Chips = append(data.Chips, chip{"admitted using exception " + f.Exception, without(func(g *Filter) { g.Exception = "" })})
	}
	if err != nil {
		data.Error = err.Error()
		h.render(w, http.StatusBadRequest, "list", s, "Decisions", data)
		return
	}
	sc, ok := h.filterScope(w, r, s, f.Namespace, q.Since)
	if !ok {
		return
	}
	q.Namespaces, data.Partial = sc.namespaces, !sc.all
	q.Limit = f.Limit + 1 // one more says whether there is another page
	ctx, cancel := h.ctx(r)
	ds, err := h.c.Store.Decisions(ctx, q)
	cancel()
	if err != nil {
		h.c.Log.Error("review: decisions not listed", "error", err)
		h.fail(w, r, s, http.StatusServiceUnavailable, "The decision store did not answer; try again later.")
		return
	}
	more := len(ds) > f.Limit
	switch {
	case more && q.After != nil:
		ds = ds[1:] // the extra one is the newest
	case more:
		ds = ds[:f.Limit]
	}
	for _, d := range ds {
		data.Rows = append(data.Rows, listRow{Decision: d, Age: duration.HumanDuration(max(now.Sub(d.Time), 0)), Images: imageCells(d)})
	}
	page := f.Page
	if q.Before == nil && q.After == nil {
		page = 1
	}
	if len(ds) > 0 {
		data.First, data.Last = (page-1)*f.Limit+1, (page-1)*f.Limit+len(ds)
		hasNewer := q.Before != nil || (q.After != nil && more)
		hasOlder := q.After != nil || more
		if hasNewer {
			data.Newer = f.Link("/decisions", "after", encodeCursor(evidence.CursorOf(ds[0])), "page", strconv.Itoa(max(page-1, 1)))
			data.Newest = f.Link("/decisions")
		}
		if hasOlder {
			data.Older = f.Link("/decisions", "before", encodeCursor(evidence.CursorOf(ds[len(ds)-1])), "page", strconv.Itoa(min(page+1, maxPage)))
		}
	} else if q.Before != nil || q.After != nil {
		data.Newest = f.Link("/decisions")
	}
	data.CSV, data.JSON = f.Link("/decisions.csv"), f.Link("/decisions.json")
	h.render(w, http.StatusOK, "list", s, "Decisions", data)
}

// imageCells are the images of a decision's record, without the workload
// element.
func imageCells(d evidence.Decision) []imageCell {
	var out []imageCell
	ims, _ := records.ParseImages(d.Images)
	for _, im := range ims {
		if im.Scope != records.ScopeWorkload && im.Image != "" {
			out = append(out, imageCell{Ref: im.Image, Digest: im.Digest})
		}
	}
	return out
}
