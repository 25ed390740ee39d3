package evidence

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"

	"buildguard.dev/buildguard/internal/testpostgres"
)

func TestSQLiteSummaries(t *testing.T) {
	summarySuite(t, func(t *testing.T) Store {
		return openSQLiteAt(t, filepath.Join(t.TempDir(), "evidence.db"))
	})
}

func TestPostgresSummaries(t *testing.T) {
	srv := testpostgres.Start(t)
	summarySuite(t, func(t *testing.T) Store {
		return openPostgresDSN(t, srv.NewDatabase(t))
	})
}

func summarySuite(t *testing.T, open func(t *testing.T) Store) {
	t.Run("DecisionSummary", func(t *testing.T) { smSummary(t, open(t)) })
	t.Run("ExceptionUsage", func(t *testing.T) { smExceptionUsage(t, open(t)) })
	t.Run("ImageWorkloads", func(t *testing.T) { smImageWorkloads(t, open(t)) })
	t.Run("Paging", func(t *testing.T) { smPaging(t, open(t)) })
	t.Run("Filters", func(t *testing.T) { smFilters(t, open(t)) })
}

// smFilters: the list's filters the overview links to.
func smFilters(t *testing.T, s Store) {
	ds := smFixture()
	ds[1].Exceptions = []string{"shop/review-1"}
	ds[5].Exceptions = []string{"shop/review-1", "exceptions[0]"}
	smAdd(t, s, ds)
	for _, tc := range []struct {
		name string
		q    DecisionQuery
		want string
	}{
		{"a day", DecisionQuery{Since: day(-1), Until: day(0)}, "u2/scan-20261125T060000Z u1/scan-20261125T060000Z y4 y3 y2 y1"},
		{"workload", DecisionQuery{Namespace: "shop", Kind: "Deployment", Name: "api"}, "u1/scan-20261126T060000Z u1/scan-20261125T060000Z y2"},
		{"name alone", DecisionQuery{Name: "site", Verdicts: []string{"would-deny"}}, "y3"},
		{"scan", DecisionQuery{Scan: "scan-20261125T060000Z"}, "u2/scan-20261125T060000Z u1/scan-20261125T060000Z"},
		{"scan and verdict", DecisionQuery{Scan: "scan-20261126T060000Z", Verdicts: []string{"warn"}}, "u2/scan-20261126T060000Z"},
		{"a scan's name is literal", DecisionQuery{Scan: "scan-2026112_T060000Z"}, ""},
		{"exception", DecisionQuery{Exception: "shop/review-1", Verdicts: allVerdicts}, "t1 y1"},
		{"exception, the other", DecisionQuery{Exception: "exceptions[0]"}, "t1"},
		{"exception never used", DecisionQuery{Exception: "shop/review"}, ""},
	} {
		got, err := s.Decisions(t.Context(), tc.q)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if ids(got) != tc.want {
			t.Errorf("%s: Decisions(%+v) = %s, want %s", tc.name, tc.q, ids(got), tc.want)
		}
	}
}

// day is a UTC day of the suite: 0 is stT0's.
func day(n int) time.Time {
	return time.Date(stT0.Year(), stT0.Month(), stT0.Day()+n, 0, 0, 0, 0, time.UTC)
}

// smDecision is a decision of the summary fixture.
func smDecision(id string, at time.Time, op, ns, kind, name, verdict string, rules []string, images ...string) Decision {
	var elems []map[string]any
	for _, im := range images {
		ref, digest, _ := strings.Cut(im, "@")
		e := map[string]any{"container": "c", "image": ref, "verdict": "deny", "findings": []any{}}
		if digest != "" {
			e["image"], e["digest"] = ref+"@"+digest, digest
		}
		elems = append(elems, e)
	}
	raw, _ := json.Marshal(elems)
	return Decision{ID: id, Time: at, Operation: op, Namespace: ns, Kind: kind, Name: name, Mode: "enforce",
		Verdict: verdict, Rules: rules, Images: raw}
}

var (
	digestA = "sha256:" + strings.Repeat("a", 64)
	digestB = "sha256:" + strings.Repeat("b", 64)
)

// smFixture spans three days: the day before yesterday (out of range of
// the summaries below), yesterday and today.
func smFixture() []Decision {
	api, web := "registry.example/shop/api:1@"+digestA, "registry.example/web/site:2@"+digestB
	return []Decision{
		smDecision("old", day(-2).Add(time.Hour), "CREATE", "shop", "Pod", "api", "deny", []string{"fresh-image"}, api),
		smDecision("y1", day(-1).Add(time.Hour), "CREATE", "shop", "Pod", "api", "deny", []string{"fresh-image", "host-built"}, api),
		smDecision("y2", day(-1).Add(2*time.Hour), "CREATE", "shop", "Deployment", "api", "deny", []string{"host-built"}, api),
		smDecision("y3", day(-1).Add(3*time.Hour), "UPDATE", "web", "Pod", "site", "would-deny", []string{"fresh-image"}, web),
		smDecision("y4", day(-1).Add(4*time.Hour), "CREATE", "web", "Pod", "site", "allow", nil, web),
		smDecision("t1", day(0).Add(time.Hour), "CREATE", "shop", "Pod", "api", "deny", []string{"fresh-image"}, api),
		smDecision("t2", day(0).Add(2*time.Hour), "CREATE", "web", "Pod", "site", "warn", []string{"runtime-socket-mount"}, "docker.io/library/nginx:1.25"),
		smDecision("t3", day(0).Add(3*time.Hour), "CREATE", "batch", "Job", "tool", "would-deny", []string{"unapproved-registry"}, "evil.example/tool:1"),
		// Two audit scans: their records are decisions too.
		smDecision("u1/scan-20261125T060000Z", day(-1).Add(6*time.Hour), "SCAN", "shop", "Deployment", "api", "would-deny", []string{"host-built"}, api),
		smDecision("u2/scan-20261125T060000Z", day(-1).Add(6*time.Hour+time.Second), "SCAN", "web", "Deployment", "site", "allow", nil, web),
		smDecision("u1/scan-20261126T060000Z", day(0).Add(6*time.Hour), "SCAN", "shop", "Deployment", "api", "would-deny", []string{"host-built"}, api),
		smDecision("u2/scan-20261126T060000Z", day(0).Add(6*time.Hour+2*time.Second), "SCAN", "web", "Deployment", "site", "warn", []string{"fresh-image"}, web),
	}
}

func smAdd(t *testing.T, s Store, ds []Decision) {
	t.Helper()
	// Half one by one, half in a batch: both write paths fill the
	// summaries' indexes.
	for _, d := range ds[:len(ds)/2] {
		if err := s.AddDecision(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.AddDecisions(t.Context(), ds[len(ds)/2:]); err != nil {
		t.Fatal(err)
	}
}

func smSummary(t *testing.T, s Store) {
	smAdd(t, s, smFixture())
	got, err := s.DecisionSummary(t.Context(), SummaryQuery{Since: day(-1)})
	if err != nil {
		t.Fatal(err)
	}
	want := Summary{
		Days: []DayCount{
			{day(-1), "allow", 2}, {day(-1), "deny", 2}, {day(-1), "would-deny", 2},
			{day(0), "deny", 1}, {day(0), "warn", 2}, {day(0), "would-deny", 2},
		},
		Rules: []DayCount{
			{day(-1), "fresh-image", 2}, {day(-1), "host-built", 3},
			{day(0), "fresh-image", 2}, {day(0), "host-built", 1}, {day(0), "runtime-socket-mount", 1}, {day(0), "unapproved-registry", 1},
		},
		RuleNamespaces: []RuleCount{
			{"fresh-image", "shop", 2}, {"fresh-image", "web", 2}, {"host-built", "shop", 4},
			{"runtime-socket-mount", "web", 1}, {"unapproved-registry", "batch", 1},
		},
		Namespaces: []Ranked{{Namespace: "shop", Deny: 3, WouldDeny: 2}, {Namespace: "batch", WouldDeny: 1}, {Namespace: "web", WouldDeny: 1}},
		Workloads: []Ranked{
			{Namespace: "shop", Kind: "Deployment", Name: "api", Deny: 1, WouldDeny: 2}, {Namespace: "shop", Kind: "Pod", Name: "api", Deny: 2},
			{Namespace: "batch", Kind: "Job", Name: "tool", WouldDeny: 1}, {Namespace: "web", Kind: "Pod", Name: "site", WouldDeny: 1},
		},
		Images: []Ranked{{Name: digestA, Deny: 3, WouldDeny: 2, Sample: "y2"}, {Name: digestB, WouldDeny: 1, Sample: "y3"}},
		Scans: []ScanCount{
			{ID: "scan-20261126T060000Z", First: day(0).Add(6 * time.Hour), Last: day(0).Add(6*time.Hour + 2*time.Second), Verdicts: map[string]int{"would-deny": 1, "warn": 1}},
			{ID: "scan-20261125T060000Z", First: day(-1).Add(6 * time.Hour), Last: day(-1).Add(6*time.Hour + time.Second), Verdicts: map[string]int{"would-deny": 1, "allow": 1}},
		},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("DecisionSummary(since yesterday) (-want +got):\n%s", diff)
	}

	// A reader of some namespaces sees their counts only.
	got, err = s.DecisionSummary(t.Context(), SummaryQuery{Since: day(0), Namespaces: []string{"web", "batch"}, Top: 1})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]DayCount{{day(0), "warn", 2}, {day(0), "would-deny", 1}}, got.Days); diff != "" {
		t.Errorf("web and batch, today: Days (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Ranked{{Namespace: "batch", WouldDeny: 1}}, got.Namespaces); diff != "" {
		t.Errorf("web and batch, today, top 1: Namespaces (-want +got):\n%s", diff)
	}
	if len(got.Images) != 0 || len(got.Scans) != 1 || got.Scans[0].Total() != 1 {
		t.Errorf("web and batch, today: Images %v (want none: the denied image there has no digest), Scans %v (want one record)", got.Images, got.Scans)
	}
	got, err = s.DecisionSummary(t.Context(), SummaryQuery{Since: day(-5), Namespaces: []string{}})
	if err != nil {
		t.Errorf("no namespaces: DecisionSummary: %v", err)
	} else if diff := cmp.Diff(Summary{}, got); diff != "" {
		t.Errorf("no namespaces: DecisionSummary (-want nothing +got):\n%s", diff)
	}
	if _, err := s.DecisionSummary(t.Context(), SummaryQuery{}); err == nil {
		t.Error("DecisionSummary without Since succeeded")
	}

	ns, err := s.DecisionNamespaces(t.Context(), day(0))
	if err != nil || !slices.Equal(ns, []string{"batch", "shop", "web"}) {
		t.Errorf("DecisionNamespaces(today) = %v, %v", ns, err)
	}
}

func smExceptionUsage(t *testing.T, s Store) {
	ds := smFixture()
	ds[1].Exceptions = []string{"shop/review-1"}
	ds[5].Exceptions = []string{"shop/review-1", "exceptions[0]"}
	ds[6].Exceptions = []string{"exceptions[0]"}
	ds[8].Exceptions = []string{"shop/review-1"} // a scan's: not an admission
	smAdd(t, s, ds)
	got, err := s.ExceptionUsage(t.Context(), []string{"shop/review-1", "exceptions[0]", "never-used"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]ExceptionUsage{
		"shop/review-1": {Decisions: 2, Last: ds[5].Time},
		"exceptions[0]": {Decisions: 2, Last: ds[6].Time},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ExceptionUsage (-want +got):\n%s", diff)
	}
	if got, err := s.ExceptionUsage(t.Context(), nil); err != nil || len(got) != 0 {
		t.Errorf("ExceptionUsage(nil) = %v, %v", got, err)
	}
}

func smImageWorkloads(t *testing.T, s Store) {
	smAdd(t, s, smFixture())
	got, err := s.ImageWorkloads(t.Context(), strings.ToUpper(digestA[:7])+digestA[7:], nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []WorkloadCount{
		{Namespace: "shop", Kind: "Deployment", Name: "api", Verdicts: map[string]int{"deny": 1, "would-deny": 2}, Last: day(0).Add(6 * time.Hour)},
		{Namespace: "shop", Kind: "Pod", Name: "api", Verdicts: map[string]int{"deny": 3}, Last: day(0).Add(time.Hour)},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ImageWorkloads(A) (-want +got):\n%s", diff)
	}
	if got, err := s.ImageWorkloads(t.Context(), digestA, []string{"web"}); err != nil || len(got) != 0 {
		t.Errorf("ImageWorkloads(A) in web = %v, %v; want none", got, err)
	}
	if got, err := s.ImageWorkloads(t.Context(), digestB, []string{"web"}); err != nil || len(got) != 2 {
		t.Errorf("ImageWorkloads(B) in web = %v, %v; want Pod and Deployment site", got, err)
	}
}

// smPaging pages through decisions of which many share a time: every
// decision comes once, in order, in both directions.
func smPaging(t *testing.T, s Store) {
	var ds []Decision
	for i := range 25 {
		// Five decisions at each of five times.
		d := smDecision(fmt.Sprintf("p%02d", i), stAt(time.Duration(i/5)*time.Second), "CREATE", []string{"a", "b"}[i%2], "Pod", "x", "deny", nil)
		ds = append(ds, d)
	}
	smAdd(t, s, ds)
	var all []string
	for _, d := range ds {
		all = append(all, d.ID)
	}
	slices.SortFunc(all, func(a, b string) int { return strings.Compare(b, a) }) // time, then ID, descending: p24 … p00
	var got []string
	var pages [][]Decision
	q := DecisionQuery{Limit: 7}
	for {
		page, err := s.Decisions(t.Context(), q)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		pages = append(pages, page)
		for _, d := range page {
			got = append(got, d.ID)
		}
		q.Before = CursorOf(page[len(page)-1])
	}
	if !slices.Equal(got, all) {
		t.Fatalf("paging forward = %v, want %v", got, all)
	}
	// Back from the last page: each page before it, as it was.
	for i := len(pages) - 1; i > 0; i-- {
		prev, err := s.Decisions(t.Context(), DecisionQuery{Limit: 7, After: CursorOf(pages[i][0])})
		if err != nil {
			t.Fatal(err)
		}
		if ids(prev) != ids(pages[i-1]) {
			t.Errorf("the page before page %d = %s, want %s", i, ids(prev), ids(pages[i-1]))
		}
	}
	// With a filter and a namespace list.
	page, err := s.Decisions(t.Context(), DecisionQuery{Limit: 3, Namespaces: []string{"a"}, Before: &Cursor{Time: stAt(2 * time.Second), ID: "p12"}})
	if err != nil || ids(page) != "p10 p08 p06" {
		t.Errorf("namespace a before p12 = %s, %v; want p10 p08 p06", ids(page), err)
	}
	if page, err := s.Decisions(t.Context(), DecisionQuery{Namespaces: []string{}}); err != nil || len(page) != 0 {
		t.Errorf("no namespaces = %s, %v; want none", ids(page), err)
	}
}

func ids(ds []Decision) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.ID)
	}
	return strings.Join(s, " ")
}

// TestSQLiteSummaryPlans: every query of a summary but ImageWorkloads
// reads one covering index and no decision row, whatever the size of the
// records: a regression to a table scan would fail here before it shows
// in the benchmark.
func TestSQLiteSummaryPlans(t *testing.T) {
	s := openSQLiteAt(t, filepath.Join(t.TempDir(), "evidence.db"))
	smAdd(t, s, smFixture())
	var out Summary
	queries := summaryQueries(SummaryQuery{Since: day(-1), Namespaces: []string{"shop"}}, sqliteSummary, &out)
	queries = append(queries, summaryStmt{sql: exceptionUsageSQL})
	for _, q := range queries {
		rows, err := s.r.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+q.sql, q.args...)
		if err != nil {
			t.Fatal(err)
		}
		plan, err := collect(rows, func(sc scanner) (string, error) {
			var id, parent, notused int
			var detail string
			return detail, sc.Scan(&id, &parent, &notused, &detail)
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range plan {
			reads := strings.HasPrefix(step, "SCAN ") || strings.HasPrefix(step, "SEARCH ")
			if reads && !strings.Contains(step, "USING COVERING INDEX") && step != "SCAN s" {
				t.Errorf("plan of %s:\n%s\nwant every read from a covering index", q.sql, strings.Join(plan, "\n"))
			}
		}
	}
}

// TestMigrateBackfillsSummaries: decisions stored before migration 0003
// are counted by summaries after it.
func TestMigrateBackfillsSummaries(t *testing.T) {
	ds := smFixture()[1:5]
	t.Run("sqlite", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "evidence.db")
		old := openSQLiteAt(t, path)
		// Back to schema 2, as a database an older buildguard wrote.
		ctx := t.Context()
		for _, q := range []string{
			"DROP INDEX decisions_verdict_time", "DROP INDEX decision_rules_time", "DROP INDEX decision_images_verdict_time",
			"DROP INDEX decisions_scans", "DROP INDEX decisions_exceptions",
			"DROP INDEX decision_images_image", "CREATE INDEX decision_images_image ON decision_images (image, decision_id)",
			"ALTER TABLE decision_rules DROP COLUMN time", "ALTER TABLE decision_rules DROP COLUMN verdict", "ALTER TABLE decision_rules DROP COLUMN namespace",
			"ALTER TABLE decision_images DROP COLUMN time", "ALTER TABLE decision_images DROP COLUMN verdict", "ALTER TABLE decision_images DROP COLUMN namespace",
			"DELETE FROM schema_migrations WHERE version > 2",
		} {
			if _, err := old.w.ExecContext(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		for _, d := range ds {
			if _, err := old.w.ExecContext(ctx, `INSERT INTO decisions (id, time, operation, namespace, kind, name, verdict, rules, images) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				d.ID, d.Time.UnixMicro(), d.Operation, d.Namespace, d.Kind, d.Name, d.Verdict, jsonList(d.Rules), string(d.Images)); err != nil {
				t.Fatal(err)
			}
			for _, r := range d.Rules {
				if _, err := old.w.ExecContext(ctx, "INSERT INTO decision_rules (decision_id, rule) VALUES (?, ?)", d.ID, r); err != nil {
					t.Fatal(err)
				}
			}
			refs, _ := imageRefs(d.Images)
			for _, r := range refs {
				if _, err := old.w.ExecContext(ctx, "INSERT INTO decision_images (decision_id, image) VALUES (?, ?)", d.ID, r); err != nil {
					t.Fatal(err)
				}
			}
		}
		old.Close()
		smCheckBackfill(t, openSQLiteAt(t, path))
	})
	t.Run("postgres", func(t *testing.T) {
		dsn := testpostgres.Start(t).NewDatabase(t)
		old := openPostgresDSN(t, dsn)
		ctx := t.Context()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		for _, q := range []string{
			"DROP INDEX decisions_verdict_time, decision_rules_time, decision_images_verdict_time, decisions_scans, decisions_exceptions, decision_images_image",
			"CREATE INDEX decision_images_image ON decision_images (image text_pattern_ops, decision_id)",
			"ALTER TABLE decision_rules DROP COLUMN time, DROP COLUMN verdict, DROP COLUMN namespace",
			"ALTER TABLE decision_images DROP COLUMN time, DROP COLUMN verdict, DROP COLUMN namespace",
			"DELETE FROM schema_migrations WHERE version > 2",
		} {
			if _, err := conn.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		for _, d := range ds {
			refs, _ := imageRefs(d.Images)
			if _, err := conn.Exec(ctx, `WITH d AS (INSERT INTO decisions (id, time, operation, namespace, kind, name, verdict, rules, images)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::json) RETURNING id),
				r AS (INSERT INTO decision_rules (decision_id, rule) SELECT d.id, x FROM d, unnest($10::text[]) x)
				INSERT INTO decision_images (decision_id, image) SELECT d.id, x FROM d, unnest($11::text[]) x`,
				d.ID, d.Time, d.Operation, d.Namespace, d.Kind, d.Name, d.Verdict, jsonList(d.Rules), string(d.Images), nonNil(d.Rules), nonNil(refs)); err != nil {
				t.Fatal(err)
			}
		}
		old.Close()
		smCheckBackfill(t, openPostgresDSN(t, dsn))
	})
}

func smCheckBackfill(t *testing.T, s Store) {
	t.Helper()
	stCheckVersions(t, s)
	got, err := s.DecisionSummary(t.Context(), SummaryQuery{Since: day(-1)})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]DayCount{{day(-1), "fresh-image", 2}, {day(-1), "host-built", 2}}, got.Rules); diff != "" {
		t.Errorf("after the migration, Rules (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]Ranked{{Name: digestA, Deny: 2, Sample: "y2"}, {Name: digestB, WouldDeny: 1, Sample: "y3"}}, got.Images); diff != "" {
		t.Errorf("after the migration, Images (-want +got):\n%s", diff)
	}
}

// TestSQLiteDecisionPlans: a page of decisions walks decisions_time
// newest first and stops at its limit, with a cursor starting at it; it
// never reads every match to sort them, as the summaries' index on
// (verdict, time) would make it.
func TestSQLiteDecisionPlans(t *testing.T) {
	s := openSQLiteAt(t, filepath.Join(t.TempDir(), "evidence.db"))
	cursor := &Cursor{Time: stT0, ID: "x"}
	for _, q := range []DecisionQuery{
		{Since: stT0, Verdicts: []string{"deny", "would-deny"}},
		{Since: stT0, Verdicts: []string{"deny", "would-deny"}, Before: cursor},
		{Since: stT0.Add(-time.Hour), Verdicts: []string{"deny"}, After: cursor},
		{Since: stT0, Verdicts: []string{"deny", "would-deny"}, Namespaces: []string{"a", "b"}, Before: cursor},
		{Since: stT0, Rule: "fresh-image", Before: cursor},
		{ImageGlob: "sha256:ab*", Verdicts: allVerdicts, Before: cursor},
		{ImageGlob: "sha256:abc", Verdicts: allVerdicts, Before: cursor},
		{ImageGlob: "sha256:abc", Since: stT0},
	} {
		query, args := decisionsSQL(q, sqliteDialect)
		rows, err := s.r.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+query, args...)
		if err != nil {
			t.Fatal(err)
		}
		plan, err := collect(rows, func(sc scanner) (string, error) {
			var id, parent, notused int
			var detail string
			return detail, sc.Scan(&id, &parent, &notused, &detail)
		})
		if err != nil {
			t.Fatal(err)
		}
		p := strings.Join(plan, "; ")
		walks := "SEARCH d USING INDEX decisions_time (time>? AND (time,id)<(?,?))"
		switch {
		case q.ImageGlob == "sha256:abc" && q.Before != nil:
			walks = "SEARCH i USING COVERING INDEX decision_images_image (image=? AND (time,decision_id)<(?,?))"
		case q.ImageGlob == "sha256:abc":
			walks = "SEARCH i USING COVERING INDEX decision_images_image (image=? AND time>?)"
		case q.After != nil:
			walks = "SEARCH d USING INDEX decisions_time ((time,id)>(?,?))"
		case q.Before == nil:
			walks = "SEARCH d USING INDEX decisions_time (time>?)"
		case q.Since.IsZero():
			walks = "SEARCH d USING INDEX decisions_time ((time,id)<(?,?))"
		}
		if !strings.Contains(p, walks) || q.After == nil && strings.Contains(p, "TEMP B-TREE") {
			t.Errorf("plan of %+v:\n%s\nwant %s and no sort", q, p, walks)
		}
	}
}
