package review

import (
	"cmp"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/records"
)

// overviewDays is how many UTC days the overview counts, today included.
const overviewDays = 14

// overviewTop is how many namespaces, workloads and images it ranks, and
// ruleWhere how many namespaces it names per rule.
const (
	overviewTop = 10
	ruleWhere   = 3
	scanPoints  = 28
)

type overviewData struct {
	Now          time.Time
	First, Today string // the first and last day counted
	Verdicts     []seriesRow
	Rules        []seriesRow
	Namespaces   []rankRow
	Workloads    []rankRow
	Images       []rankRow
	Scans        []scanRow
	ScanChart    sparkline
	// Partial: the user may list decisions in some namespaces only;
	// Truncated: in more than were asked about.
	Partial, Truncated bool
	// Exceptions says what exceptions need attention, when the UI lists
	// them.
	Exceptions *exceptionNews
}

// seriesRow is a verdict's or a rule's counts per day.
type seriesRow struct {
	Key, Class string
	Chart      sparkline
	Today      count
	Yesterday  count
	Total      count
	// Where are the namespaces a rule fired in most.
	Where []count
}

// count is a number that links to the decisions it counts.
type count struct {
	Label string
	N     int
	Href  string
}

// rankRow is a namespace, workload or image the overview ranks.
type rankRow struct {
	Label     string
	Href      string // its page or filtered list
	Ref       string // an image's reference, when known
	Deny      count
	WouldDeny count
	// Share is the row's width in the decorative bar, of 100.
	Share int
}

type scanRow struct {
	ID, When  string
	Total     int
	WouldDeny count
	Warn      count
	Allow     count
	Href      string
}

type exceptionNews struct {
	Expiring int
	Error    string
}

// listLink is the URL of the decision list with these parameters.
func listLink(kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i] == "verdict" {
			q.Add("verdict", kv[i+1])
			continue
		}
		q.Set(kv[i], kv[i+1])
	}
	return "/decisions?" + q.Encode()
}

// everyVerdict is the list's verdict parameters for every verdict.
func everyVerdict(kv ...string) []string {
	for _, v := range allVerdicts {
		kv = append(kv, "verdict", v)
	}
	return kv
}

func (h *Handler) overview(w http.ResponseWriter, req *http.Request, s *session) {
	r := req
	// "/" was the list: its links, with filters, still lead there.
	if r.URL.RawQuery != "" {
		http.Redirect(w, r, "/decisions?"+r.URL.RawQuery, http.StatusSeeOther)
		return
	}
	now := h.c.Clock.Now()
	today := now.UTC().Truncate(24 * time.Hour)
	first := today.AddDate(0, 0, -(overviewDays - 1))
	sc, ok := h.filterScope(w, r, s, "", first)
	if !ok {
		return
	}
	q := evidence.SummaryQuery{Since: first, Top: overviewTop}
	if !sc.all {
		q.Namespaces = sc.namespaces
	}
	ctx, cancel := h.ctx(r)
	sum, err := h.c.Store.DecisionSummary(ctx, q)
	cancel()
	if err != nil {
		h.c.Log.Error("review: decisions not summarized", "error", err)
		h.fail(w, r, s, http.StatusServiceUnavailable, "The decision store did not answer; try again later.")
		return
	}
	data := overviewData{Now: now, First: day(first), Today: day(today), Partial: !sc.all, Truncated: sc.truncated}
	days := make([]time.Time, overviewDays)
	for i := range days {
		days[i] = first.AddDate(0, 0, i)
	}
	since := day(first)

	// Per verdict: the denials first.
	byVerdict := map[string]map[time.Time]int{}
	for _, c := range sum.Days {
		if byVerdict[c.Key] == nil {
			byVerdict[c.Key] = map[time.Time]int{}
		}
		byVerdict[c.Key][c.Day] += c.Count
	}
	for _, v := range allVerdicts {
		data.Verdicts = append(data.Verdicts, series(v+" per day", "v-"+v, days, byVerdict[v], func(d string) []string {
			if d == "" {
				return []string{"since", since, "verdict", v}
			}
			return []string{"day", d, "verdict", v}
		}))
		data.Verdicts[len(data.Verdicts)-1].Key = v
	}

	// Per rule, the most found first, with where it fired.
	byRule := map[string]map[time.Time]int{}
	for _, c := range sum.Rules {
		if byRule[c.Key] == nil {
			byRule[c.Key] = map[time.Time]int{}
		}
		byRule[c.Key][c.Day] += c.Count
	}
	where := map[string][]count{}
	for _, c := range sum.RuleNamespaces {
		if len(where[c.Rule]) < ruleWhere {
			where[c.Rule] = append(where[c.Rule], count{Label: c.Namespace, N: c.Count,
				Href: listLink(everyVerdict("since", since, "rule", c.Rule, "namespace", c.Namespace)...)})
		}
	}
	for rule, perDay := range byRule {
		row := series(rule+" per day", "rule", days, perDay, func(d string) []string {
			if d == "" {
				return everyVerdict("since", since, "rule", rule)
			}
			return everyVerdict("day", d, "rule", rule)
		})
		row.Key, row.Where = rule, where[rule]
		data.Rules = append(data.Rules, row)
	}
	slices.SortFunc(data.Rules, func(a, b seriesRow) int {
		return cmp.Or(cmp.Compare(b.Total.N, a.Total.N), cmp.Compare(a.Key, b.Key))
	})

	peak := 1
	for _, rs := range [][]evidence.Ranked{sum.Namespaces, sum.Workloads, sum.Images} {
		for _, r := range rs {
			peak = max(peak, r.Deny+r.WouldDeny)
		}
	}
	rank := func(r evidence.Ranked, label, href string, filter ...string) rankRow {
		return rankRow{Label: label, Href: href, Share: (r.Deny + r.WouldDeny) * 100 / peak,
			Deny:      count{N: r.Deny, Href: listLink(append([]string{"since", since, "verdict", records.VerdictDeny}, filter...)...)},
			WouldDeny: count{N: r.WouldDeny, Href: listLink(append([]string{"since", since, "verdict", records.VerdictWouldDeny}, filter...)...)},
		}
	}
	for _, r := range sum.Namespaces {
		data.Namespaces = append(data.Namespaces, rank(r, r.Namespace, listLink("since", since, "namespace", r.Namespace), "namespace", r.Namespace))
	}
	for _, r := range sum.Workloads {
		f := []string{"namespace", r.Namespace, "kind", r.Kind, "name", r.Name}
		data.Workloads = append(data.Workloads, rank(r, r.Namespace+"/"+strings.ToLower(r.Kind)+"/"+r.Name, listLink(append([]string{"since", since}, f...)...), f...))
	}
	for _, r := range sum.Images {
		row := rank(r, r.Name, "/images/"+r.Name, "image", r.Name)
		row.Ref = h.imageRef(req, r.Name, r.Sample)
		data.Images = append(data.Images, row)
	}

	// Audit scans, oldest first in the chart and newest first in the
	// table.
	var points []point
	for i := len(sum.Scans) - 1; i >= 0; i-- {
		sc := sum.Scans[i]
		if len(sum.Scans)-i > scanPoints {
			continue
		}
		points = append(points, point{Label: scanTime(sc), N: sc.Verdicts[records.VerdictWouldDeny],
			Href: listLink("since", "all", "scan", sc.ID, "verdict", records.VerdictWouldDeny)})
	}
	data.ScanChart = newSparkline("Workloads audit scans would deny, per scan", points)
	for _, sc := range sum.Scans {
		c := func(v string) count {
			return count{N: sc.Verdicts[v], Href: listLink("since", "all", "scan", sc.ID, "verdict", v)}
		}
		data.Scans = append(data.Scans, scanRow{ID: sc.ID, When: scanTime(sc), Total: sc.Total(), Href: listLink(everyVerdict("since", "all", "scan", sc.ID)...),
			WouldDeny: c(records.VerdictWouldDeny), Warn: c(records.VerdictWarn), Allow: c(records.VerdictAllow)})
	}
	if h.c.Exceptions != nil {
		data.Exceptions = &exceptionNews{}
		xs, err := h.visibleExceptions(r, s)
		if err != nil {
			data.Exceptions.Error = err.Error()
		}
		for _, x := range xs {
			if x.Expiring {
				data.Exceptions.Expiring++
			}
		}
	}
	h.render(w, http.StatusOK, "overview", s, "Overview", data)
}

// series is a row of counts per day; link gives the list parameters of a
// day's decisions, or of all days' for "".
func series(what, class string, days []time.Time, perDay map[time.Time]int, link func(day string) []string) seriesRow {
	row := seriesRow{Class: class}
	points := make([]point, len(days))
	for i, d := range days {
		points[i] = point{Label: day(d), N: perDay[d], Href: listLink(link(day(d))...)}
		row.Total.N += perDay[d]
	}
	row.Chart = newSparkline(what, points)
	row.Today = count{N: points[len(points)-1].N, Href: points[len(points)-1].Href}
	if len(points) > 1 {
		row.Yesterday = count{N: points[len(points)-2].N, Href: points[len(points)-2].Href}
	}
	row.Total.Href = listLink(link("")...)
	return row
}

// imageRef is the reference an image of the overview's ranking was
// admitted as, from a decision that recorded it; "" when unknown.
func (h *Handler) imageRef(r *http.Request, digest, sample string) string {
	if sample == "" {
		return ""
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	d, err := h.c.Store.Decision(ctx, sample)
	if err != nil {
		return ""
	}
	for _, im := range imageCells(d) {
		if strings.EqualFold(im.Digest, digest) {
			ref, _, _ := strings.Cut(im.Ref, "@")
			return ref
		}
	}
	return ""
}

func day(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// scanTime is when a scan started, from its name, else its first record.
func scanTime(sc evidence.ScanCount) string {
	if t, err := time.Parse("scan-20060102T150405Z", sc.ID); err == nil {
		return t.Format("2006-01-02 15:04")
	}
	return sc.First.Format("2006-01-02 15:04")
}
