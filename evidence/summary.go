package evidence

import (
	"context"

	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Summaries are the aggregate questions the review UI asks of decision
// records: what happened per day, which rules, namespaces, workloads and
// images stand out, what audit scans found, and how often exceptions were
// used. Each is answered from indexes that hold what it counts (schema
// migration 0003), so its cost grows with the rows counted, not with
// the size of the records.
type Summaries interface {
	// DecisionSummary counts the decisions of q.
	DecisionSummary(ctx context.Context, q SummaryQuery) (Summary, error)
	// DecisionNamespaces returns the namespaces of the decisions at or
	// after since, sorted.
	DecisionNamespaces(ctx context.Context, since time.Time) ([]string, error)
	// ExceptionUsage returns how many decisions of admissions (audit
	// scans' records aside) each of names was recorded as used by, and
	// when last; a name never used is missing from the map.
	ExceptionUsage(ctx context.Context, names []string) (map[string]ExceptionUsage, error)
	// ImageWorkloads returns the workloads that decisions recorded with
	// an image of this digest (lower case, as indexed), the most recent
	// first, at most maxImageWorkloads, in q.Namespaces when that is not
	// nil.
	ImageWorkloads(ctx context.Context, digest string, namespaces []string) ([]WorkloadCount, error)
}

// SummaryQuery selects the decisions a Summary counts.
type SummaryQuery struct {
	// Since keeps decisions at or after this time. Required: a summary
	// of all time would count every row.
	Since time.Time
	// Namespaces, when not nil, keeps decisions in these namespaces only
	// (a reader who may list some): none when it is empty.
	Namespaces []string
	// Top is how many namespaces, workloads and images are ranked. The
	// default is 10, the most 100.
	Top int
}

// Summary counts decisions. Days are UTC days: the time of the day's
// midnight, UTC.
type Summary struct {
	// Days counts decisions per day and verdict; days and verdicts
	// without any are left out.
	Days []DayCount
	// Rules counts the decisions that found each rule, per day.
	Rules []DayCount
	// RuleNamespaces counts the decisions that found each rule, per
	// namespace, most first: where each rule fires.
	RuleNamespaces []RuleCount
	// Namespaces, Workloads and Images rank what was denied or would have
	// been most (denials and would-be denials together, then by name);
	// an image is its digest (images never resolved to one are not
	// ranked).
	Namespaces []Ranked
	Workloads  []Ranked
	Images     []Ranked
	// Scans are the audit scans with records in the range, newest first,
	// at most maxSummaryScans.
	Scans []ScanCount
}

// DayCount is a count of decisions of one UTC day: of a verdict (Days)
// or of a rule (Rules).
type DayCount struct {
	Day   time.Time
	Key   string
	Count int
}

// RuleCount is how many decisions in a namespace found a rule.
type RuleCount struct {
	Rule, Namespace string
	Count           int
}

// Ranked is a namespace, workload or image and how often it was denied
// (Deny) or would have been (WouldDeny).
type Ranked struct {
	Namespace string // for a namespace or workload
	Kind      string // for a workload
	Name      string // a workload's name, or an image's digest
	Deny      int
	WouldDeny int
	// Sample is the ID of one of an image's decisions, whose record
	// names the image.
	Sample string
}

// ScanCount is what the records of one audit scan say.
type ScanCount struct {
	// ID is the scan's name, the suffix of its records' IDs
	// ("scan-20261202T031500Z").
	ID string
	// First and Last are the times of its first and last record.
	First, Last time.Time
	// Verdicts counts its records by verdict.
	Verdicts map[string]int
}

// Total is the number of the scan's records.
func (s ScanCount) Total() int {
	n := 0
	for _, c := range s.Verdicts {
		n += c
	}
	return n
}

// ExceptionUsage is how often an exception was recorded as used.
type ExceptionUsage struct {
	Decisions int
	Last      time.Time
}

// WorkloadCount is a workload and its decisions that recorded one image.
type WorkloadCount struct {
	Namespace, Kind, Name string
	// Verdicts counts its decisions by verdict.
	Verdicts map[string]int
	// Last is the time of its newest.
	Last time.Time
}

// Limits of summaries.
const (
	defaultSummaryTop = 10
	maxSummaryTop     = 100
	maxSummaryScans   = 200
	maxImageWorkloads = 500
)

// denials are the verdicts the rankings count.
var denials = []string{"deny", "would-deny"}

// allVerdicts are the verdicts decisions are recorded with; naming them
// lets an index on (verdict, time) serve a range of time.
var allVerdicts = []string{"allow", "warn", "deny", "would-deny"}

// summaryDialect is how a backend writes what summaries compute.
type summaryDialect struct {
	dialect
	// day is the expression of col's UTC day, in days since the epoch.
	day func(col string) string
	// scanName is the expression of a scan record's scan name, from its ID.
	scanName string
	backend  string
}

var (
	sqliteSummary = summaryDialect{
		dialect: sqliteDialect,
		day:     func(col string) string { return col + " / 86400000000" },
		// "<uid>/scan-…": what follows the last slash. IDs hold at most
		// one; an ID without one is its own scan name.
		scanName: "substr(id, instr(id, '/') + 1)",
		backend:  "sqlite",
	}
	pgSummary = summaryDialect{
		dialect:  pgDialect,
		day:      func(col string) string { return "floor(extract(epoch FROM " + col + ") / 86400)::bigint" },
		scanName: "substr(id, strpos(id, '/') + 1)",
		backend:  "postgres",
	}
)

// summaryStmt is one query of a summary and how to read its rows.
type summaryStmt struct {
	sql  string
	args []any
	scan func(sc scanner) error
}

// summaryQueries builds the queries of DecisionSummary; their scans fill
// out.
func summaryQueries(q SummaryQuery, d summaryDialect, out *Summary) []summaryStmt {
	top := q.Top
	switch {
	case top <= 0:
		top = defaultSummaryTop
	case top > maxSummaryTop:
		top = maxSummaryTop
	}
	since := d.timeArg(microTime(q.Since))
	// where returns the conditions on verdicts, time and namespaces, and
	// the query's arguments.
	where := func(verdicts []string) (string, []any) {
		var args []any
		arg := func(v any) string {
			args = append(args, v)
			return d.placeholder(len(args))
		}
		var conds []string
		if verdicts != nil {
			conds = append(conds, "verdict IN ("+inList(verdicts, arg)+")")
		}
		conds = append(conds, "time >= "+arg(since))
		if q.Namespaces != nil {
			conds = append(conds, d.unindexed("namespace")+" IN ("+inList(q.Namespaces, arg)+")")
		}
		return strings.Join(conds, " AND "), args
	}
	count := "count(*)"
	deny := "sum(CASE WHEN verdict = 'deny' THEN 1 ELSE 0 END)"
	wouldDeny := "sum(CASE WHEN verdict = 'would-deny' THEN 1 ELSE 0 END)"
	rank := func(group string) string {
		return " GROUP BY " + group + " ORDER BY count(*) DESC, " + group + " LIMIT " + fmt.Sprint(top)
	}

	var stmts []summaryStmt
	w, args := where(allVerdicts)
	stmts = append(stmts, summaryStmt{
		sql:  "SELECT " + d.day("time") + " AS day, verdict, " + count + " FROM decisions WHERE " + w + " GROUP BY day, verdict ORDER BY day, verdict",
		args: args,
		scan: dayCounts(&out.Days),
	})
	w, args = where(nil)
	stmts = append(stmts, summaryStmt{
		sql:  "SELECT " + d.day("time") + " AS day, rule, " + count + " FROM decision_rules WHERE " + w + " GROUP BY day, rule ORDER BY day, rule",
		args: args,
		scan: dayCounts(&out.Rules),
	})
	stmts = append(stmts, summaryStmt{
		sql:  "SELECT rule, namespace, " + count + " FROM decision_rules WHERE " + w + " GROUP BY rule, namespace ORDER BY rule, count(*) DESC, namespace",
		args: args,
		scan: rows(&out.RuleNamespaces, func(c *RuleCount) []any { return []any{&c.Rule, &c.Namespace, &c.Count} }),
	})
	w, args = where(denials)
	stmts = append(stmts, summaryStmt{
		sql:  "SELECT namespace, " + deny + ", " + wouldDeny + " FROM decisions WHERE " + w + rank("namespace"),
		args: args,
		scan: rows(&out.Namespaces, func(r *Ranked) []any { return []any{&r.Namespace, &r.Deny, &r.WouldDeny} }),
	})
	stmts = append(stmts, summaryStmt{
		sql:  "SELECT namespace, kind, name, " + deny + ", " + wouldDeny + " FROM decisions WHERE " + w + rank("namespace, kind, name"),
		args: args,
		scan: rows(&out.Workloads, func(r *Ranked) []any { return []any{&r.Namespace, &r.Kind, &r.Name, &r.Deny, &r.WouldDeny} }),
	})
	// Digests: what an image resolved to, whatever tag named it. The
	// index rows of a decision hold its image references and digests,
	// lower-cased; a digest is algorithm:hex, which no reference is.
	stmts = append(stmts, summaryStmt{
		// verdict <> 'allow', which denials imply, names the condition
		// of the partial index decision_images_verdict_time (migration
		// 0004): SQLite uses a partial index only for a query that says
		// its condition.
		sql: "SELECT image, " + deny + ", " + wouldDeny + ", max(decision_id) FROM decision_images WHERE " + w +
			" AND verdict <> 'allow' AND (image LIKE 'sha256:%' OR image LIKE 'sha384:%' OR image LIKE 'sha512:%')" + rank("image"),
		args: args,
		scan: rows(&out.Images, func(r *Ranked) []any { return []any{&r.Name, &r.Deny, &r.WouldDeny, &r.Sample} }),
	})
	w, args = where(nil)
	scans := map[string]int{} // scan name → index in out.Scans
	stmts = append(stmts, summaryStmt{
		// The newest scans first; a scan's rows come together.
		sql: "SELECT scan, verdict, count(*), min(time), max(time) FROM (SELECT " + d.scanName + " AS scan, verdict, time FROM decisions WHERE operation = 'SCAN' AND " + w +
			") s GROUP BY scan, verdict ORDER BY scan DESC, verdict",
		args: args,
		scan: func(sc scanner) error {
			var (
				name, verdict string
				n             int
				first, last   time.Time
			)
			if err := scanSummaryTimes(sc, d.backend, &name, &verdict, &n, &first, &last); err != nil {
				return err
			}
			i, ok := scans[name]
			if !ok {
				if len(out.Scans) == maxSummaryScans {
					return nil
				}
				i = len(out.Scans)
				scans[name] = i
				out.Scans = append(out.Scans, ScanCount{ID: name, First: first, Last: last, Verdicts: map[string]int{}})
			}
			s := &out.Scans[i]
			s.Verdicts[verdict] += n
			if first.Before(s.First) {
				s.First = first
			}
			if last.After(s.Last) {
				s.Last = last
			}
			return nil
		},
	})
	return stmts
}

// scanSummaryTimes scans a row of name, verdict, count, min(time) and
// max(time); SQLite returns the times as microseconds, PostgreSQL as
// times.
func scanSummaryTimes(sc scanner, backend string, name, verdict *string, n *int, first, last *time.Time) error {
	if backend == "sqlite" {
		var f, l int64
		if err := sc.Scan(name, verdict, n, &f, &l); err != nil {
			return err
		}
		*first, *last = time.UnixMicro(f).UTC(), time.UnixMicro(l).UTC()
		return nil
	}
	if err := sc.Scan(name, verdict, n, first, last); err != nil {
		return err
	}
	*first, *last = first.UTC(), last.UTC()
	return nil
}

// exceptionUsageSQL counts decisions by the list of exceptions they used;
// the lists are few, and addUsage splits them.
const exceptionUsageSQL = "SELECT exceptions, count(*), max(time) FROM decisions WHERE exceptions IS NOT NULL AND operation <> 'SCAN' GROUP BY exceptions"

// addUsage adds the decisions of one list of exceptions to the usage of
// the names in want.
func addUsage(usage map[string]ExceptionUsage, want map[string]bool, list string, n int, last time.Time) error {
	var names []string
	if err := json.Unmarshal([]byte(list), &names); err != nil {
		return fmt.Errorf("column exceptions: %w", err)
	}
	slices.Sort(names)
	for _, name := range slices.Compact(names) {
		if !want[name] {
			continue
		}
		u := usage[name]
		u.Decisions += n
		if last.After(u.Last) {
			u.Last = last
		}
		usage[name] = u
	}
	return nil
}

// imageWorkloadsSQL is the query of ImageWorkloads: one row per workload
// and verdict.
func imageWorkloadsSQL(digest string, namespaces []string, d dialect) (string, []any) {
	var args []any
	arg := func(v any) string {
		args = append(args, v)
		return d.placeholder(len(args))
	}
	s := "SELECT d.namespace, d.kind, d.name, d.verdict, count(*), max(d.time) FROM decision_images i JOIN decisions d ON d.id = i.decision_id WHERE i.image = " + arg(strings.ToLower(digest))
	if namespaces != nil {
		if len(namespaces) == 0 {
			s += " AND 1 = 0"
		} else {
			s += " AND i.namespace IN (" + inList(namespaces, arg) + ")"
		}
	}
	return s + " GROUP BY d.namespace, d.kind, d.name, d.verdict", args
}

// collectWorkloads merges the rows of imageWorkloadsSQL into workloads,
// the most recent first, at most maxImageWorkloads.
func collectWorkloads(sc func(yield func(ns, kind, name, verdict string, n int, last time.Time)) error) ([]WorkloadCount, error) {
	byKey := map[[3]string]*WorkloadCount{}
	var out []*WorkloadCount
	err := sc(func(ns, kind, name, verdict string, n int, last time.Time) {
		k := [3]string{ns, kind, name}
		w, ok := byKey[k]
		if !ok {
			w = &WorkloadCount{Namespace: ns, Kind: kind, Name: name, Verdicts: map[string]int{}}
			byKey[k] = w
			out = append(out, w)
		}
		w.Verdicts[verdict] += n
		if last.After(w.Last) {
			w.Last = last
		}
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b *WorkloadCount) int {
		if c := b.Last.Compare(a.Last); c != 0 {
			return c
		}
		return strings.Compare(a.Namespace+"/"+a.Kind+"/"+a.Name, b.Namespace+"/"+b.Kind+"/"+b.Name)
	})
	res := make([]WorkloadCount, 0, min(len(out), maxImageWorkloads))
	for _, w := range out[:min(len(out), maxImageWorkloads)] {
		res = append(res, *w)
	}
	return res, nil
}

// The queries of DecisionNamespaces.
const (
	sqliteNamespacesSQL = "SELECT DISTINCT namespace FROM decisions WHERE time >= ? ORDER BY namespace"
	pgNamespacesSQL     = "SELECT DISTINCT namespace FROM decisions WHERE time >= $1 ORDER BY namespace"
)

// runSummary runs the queries of a summary at once, each on its own
// connection: they read different indexes.
func runSummary(ctx context.Context, stmts []summaryStmt, query func(ctx context.Context, st summaryStmt) error) error {
	errs := make([]error, len(stmts))
	var wg sync.WaitGroup
	for i, st := range stmts {
		wg.Go(func() { errs[i] = query(ctx, st) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// DecisionSummary implements Summaries.
func (s *SQLite) DecisionSummary(ctx context.Context, q SummaryQuery) (Summary, error) {
	var out Summary
	if q.Since.IsZero() {
		return out, &InvalidError{Item: "summary", Index: -1, Field: "Since", Reason: "is zero"}
	}
	if q.Namespaces != nil && len(q.Namespaces) == 0 {
		return out, nil
	}
	err := runSummary(ctx, summaryQueries(q, sqliteSummary, &out), func(ctx context.Context, st summaryStmt) error {
		rows, err := s.r.QueryContext(ctx, st.sql, st.args...)
		if err != nil {
			return err
		}
		_, err = collect(rows, func(sc scanner) (struct{}, error) { return struct{}{}, st.scan(sc) })
		return err
	})
	if err != nil {
		return Summary{}, s.fail("DecisionSummary", err)
	}
	return out, nil
}

// DecisionNamespaces implements Summaries.
func (s *SQLite) DecisionNamespaces(ctx context.Context, since time.Time) ([]string, error) {
	rows, err := s.r.QueryContext(ctx, sqliteNamespacesSQL, microTime(since).UnixMicro())
	if err != nil {
		return nil, s.fail("DecisionNamespaces", err)
	}
	ns, err := collect(rows, func(sc scanner) (string, error) {
		var n string
		return n, sc.Scan(&n)
	})
	if err != nil {
		return nil, s.fail("DecisionNamespaces", err)
	}
	return ns, nil
}

// ExceptionUsage implements Summaries.
func (s *SQLite) ExceptionUsage(ctx context.Context, names []string) (map[string]ExceptionUsage, error) {
	usage, want := map[string]ExceptionUsage{}, wanted(names)
	if len(want) == 0 {
		return usage, nil
	}
	rows, err := s.r.QueryContext(ctx, exceptionUsageSQL)
	if err != nil {
		return nil, s.fail("ExceptionUsage", err)
	}
	_, err = collect(rows, func(sc scanner) (struct{}, error) {
		var (
			list string
			n    int
			last int64
		)
		if err := sc.Scan(&list, &n, &last); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, addUsage(usage, want, list, n, time.UnixMicro(last).UTC())
	})
	if err != nil {
		return nil, s.fail("ExceptionUsage", err)
	}
	return usage, nil
}

// ImageWorkloads implements Summaries.
func (s *SQLite) ImageWorkloads(ctx context.Context, digest string, namespaces []string) ([]WorkloadCount, error) {
	q, args := imageWorkloadsSQL(digest, namespaces, sqliteDialect)
	ws, err := collectWorkloads(func(yield func(ns, kind, name, verdict string, n int, last time.Time)) error {
		rows, err := s.r.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		_, err = collect(rows, func(sc scanner) (struct{}, error) {
			var (
				ns, kind, name, verdict string
				n                       int
				last                    int64
			)
			if err := sc.Scan(&ns, &kind, &name, &verdict, &n, &last); err != nil {
				return struct{}{}, err
			}
			yield(ns, kind, name, verdict, n, time.UnixMicro(last).UTC())
			return struct{}{}, nil
		})
		return err
	})
	if err != nil {
		return nil, s.fail("ImageWorkloads", err)
	}
	return ws, nil
}

// DecisionSummary implements Summaries.
func (p *Postgres) DecisionSummary(ctx context.Context, q SummaryQuery) (Summary, error) {
	var out Summary
	if q.Since.IsZero() {
		return out, &InvalidError{Item: "summary", Index: -1, Field: "Since", Reason: "is zero"}
	}
	if q.Namespaces != nil && len(q.Namespaces) == 0 {
		return out, nil
	}
	err := runSummary(ctx, summaryQueries(q, pgSummary, &out), func(ctx context.Context, st summaryStmt) error {
		_, err := pgQuery(ctx, p.pool, func(sc scanner) (struct{}, error) { return struct{}{}, st.scan(sc) }, st.sql, st.args...)
		return err
	})
	if err != nil {
		return Summary{}, p.fail("DecisionSummary", err)
	}
	return out, nil
}

// DecisionNamespaces implements Summaries.
func (p *Postgres) DecisionNamespaces(ctx context.Context, since time.Time) ([]string, error) {
	ns, err := pgQuery(ctx, p.pool, func(sc scanner) (string, error) {
		var n string
		return n, sc.Scan(&n)
	}, pgNamespacesSQL, microTime(since))
	if err != nil {
		return nil, p.fail("DecisionNamespaces", err)
	}
	return ns, nil
}

// ExceptionUsage implements Summaries.
func (p *Postgres) ExceptionUsage(ctx context.Context, names []string) (map[string]ExceptionUsage, error) {
	usage, want := map[string]ExceptionUsage{}, wanted(names)
	if len(want) == 0 {
		return usage, nil
	}
	_, err := pgQuery(ctx, p.pool, func(sc scanner) (struct{}, error) {
		var (
			list string
			n    int
			last time.Time
		)
		if err := sc.Scan(&list, &n, &last); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, addUsage(usage, want, list, n, last.UTC())
	}, strings.Replace(exceptionUsageSQL, "SELECT exceptions,", "SELECT exceptions::text,", 1))
	if err != nil {
		return nil, p.fail("ExceptionUsage", err)
	}
	return usage, nil
}

// ImageWorkloads implements Summaries.
func (p *Postgres) ImageWorkloads(ctx context.Context, digest string, namespaces []string) ([]WorkloadCount, error) {
	q, args := imageWorkloadsSQL(digest, namespaces, pgDialect)
	ws, err := collectWorkloads(func(yield func(ns, kind, name, verdict string, n int, last time.Time)) error {
		_, err := pgQuery(ctx, p.pool, func(sc scanner) (struct{}, error) {
			var (
				ns, kind, name, verdict string
				n                       int
				last                    time.Time
			)
			if err := sc.Scan(&ns, &kind, &name, &verdict, &n, &last); err != nil {
				return struct{}{}, err
			}
			yield(ns, kind, name, verdict, n, last.UTC())
			return struct{}{}, nil
		}, q, args...)
		return err
	})
	if err != nil {
		return nil, p.fail("ImageWorkloads", err)
	}
	return ws, nil
}

func wanted(names []string) map[string]bool {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	return want
}

// Compile-time checks that both backends answer summaries.
var (
	_ Summaries = (*SQLite)(nil)
	_ Summaries = (*Postgres)(nil)
)

// rows returns a summaryStmt's scan that appends each row to dst, its
// columns read into the fields cols names.
func rows[T any](dst *[]T, cols func(*T) []any) func(scanner) error {
	return func(sc scanner) error {
		var v T
		if err := sc.Scan(cols(&v)...); err != nil {
			return err
		}
		*dst = append(*dst, v)
		return nil
	}
}

// dayCounts returns a summaryStmt's scan that appends each (day, key,
// count) row to dst, the day a number of days since the Unix epoch (UTC).
func dayCounts(dst *[]DayCount) func(scanner) error {
	return func(sc scanner) error {
		var c DayCount
		var day int64
		if err := sc.Scan(&day, &c.Key, &c.Count); err != nil {
			return err
		}
		c.Day = time.Unix(day*86400, 0).UTC()
		*dst = append(*dst, c)
		return nil
	}
}
