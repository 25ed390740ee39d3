package review

import (
	"bytes"
	cryptorand "crypto/rand"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"html"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/policysource"
	"buildguard.dev/buildguard/records"
)

// addHistory records, besides the fixture's decisions of today, copies of
// them on earlier days, two audit scans' records, and one decision older
// than the overview's two weeks.
func (f *fixture) addHistory() {
	f.t.Helper()
	base := testDecisions()
	at := func(d evidence.Decision, id string, when time.Time) evidence.Decision {
		d.ID, d.Time = id, when
		return d
	}
	scan := func(d evidence.Decision, id, verdict string, when time.Time) evidence.Decision {
		d = at(d, id, when)
		d.Operation, d.Verdict = "SCAN", verdict
		return d
	}
	ds := []evidence.Decision{
		at(base[0], "h-shop-1d", t0.Add(-24*time.Hour)),
		at(base[0], "h-shop-3d", t0.Add(-72*time.Hour)),
		at(base[1], "h-staging-1d", t0.Add(-25*time.Hour)),
		at(base[0], "h-shop-20d", t0.Add(-20*24*time.Hour)),
		scan(base[1], "u9/scan-20261130T060000Z", records.VerdictWouldDeny, time.Date(2026, 11, 30, 6, 0, 5, 0, time.UTC)),
		scan(base[2], "u8/scan-20261130T060000Z", records.VerdictAllow, time.Date(2026, 11, 30, 6, 0, 7, 0, time.UTC)),
		scan(base[0], "u7/scan-20261201T060000Z", records.VerdictWouldDeny, time.Date(2026, 12, 1, 6, 0, 1, 0, time.UTC)),
	}
	if err := f.store.AddDecisions(f.t.Context(), ds); err != nil {
		f.t.Fatal(err)
	}
}

func TestOverviewGolden(t *testing.T) {
	f := newFixture(t)
	f.addHistory()
	c, _ := f.login("alice-token")
	w := f.do("GET", "/", nil, c)
	if w.Code != http.StatusOK {
		t.Fatalf("GET / = %d\n%s", w.Code, text(w.Body.String()))
	}
	checkGolden(t, "overview.html.golden", w.Body.Bytes())
	got := text(w.Body.String())
	// The charts' text alternatives: deny today 1, yesterday 1, 3 in the
	// 14 days (the one 20 days ago is not counted).
	for _, want := range []string{
		`<svg class="spark" role="img" aria-label="deny per day, 2026-11-18 to 2026-12-01: 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1. 3 in all; most on 2026-11-28 (1)."`,
		`aria-label="would-deny per day, 2026-11-18 to 2026-12-01: 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 2. 4 in all; most on 2026-11-30 (2)."`,
		`aria-label="Workloads audit scans would deny, per scan, 2026-11-30 06:00 to 2026-12-01 06:00: 1, 1. 2 in all; most on 2026-11-30 06:00 (1)."`,
	} {
		if !strings.Contains(w.Body.String(), want) {
			t.Errorf("the overview has no %s", want)
		}
	}
	for _, want := range []string{
		"Decisions of the last 14 days, 2026-11-18 to 2026-12-01 (UTC).",
		"Namespaces Namespace Denied Would deny Share shop 3 1",
		"Workloads Workload Denied Would deny Share shop/deployment/api 3 1",
		"registry.example/shop/api:1.4 sha256:" + strings.Repeat("a", 64) + " 3 1",
		"2026-12-01 06:00 scan-20261201T060000Z 1 1 0 0",
		"2026-11-30 06:00 scan-20261130T060000Z 2 1 0 1",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the overview does not say %q\n%s", want, got)
		}
	}
}

// TestOverviewCountsLink: every count of the overview links to a list of
// exactly the decisions it counts.
func TestOverviewCountsLink(t *testing.T) {
	f := newFixture(t)
	f.addHistory()
	c, _ := f.login("alice-token")
	page := f.do("GET", "/", nil, c).Body.String()
	links := regexp.MustCompile(`<a href="(/decisions\?[^"]*)"(?: aria-label="[^"]*")?>([0-9]+)</a>`).FindAllStringSubmatch(page, -1)
	if len(links) < 30 {
		t.Fatalf("the overview has %d count links, want every non-zero count", len(links))
	}
	for _, l := range links {
		target, want := html.UnescapeString(l[1]), l[2]
		w := f.do("GET", target, nil, c)
		if w.Code != http.StatusOK {
			t.Errorf("GET %s = %d", target, w.Code)
			continue
		}
		if got := strconv.Itoa(len(rowIDs(w.Body.String()))); got != want {
			t.Errorf("%s counts %s, its list has %s rows", target, want, got)
		}
	}
}

func TestOverviewNamespaceAccess(t *testing.T) {
	f := newFixture(t)
	f.addHistory()
	f.h.c.Random = cryptorand.Reader // a session of its own
	c, _ := f.login("carol-token")   // may list shop only
	w := f.do("GET", "/", nil, c)
	got := text(w.Body.String())
	if w.Code != http.StatusOK || !strings.Contains(got, "Only decisions in namespaces you may list are counted.") {
		t.Fatalf("carol's overview = %d\n%s", w.Code, got)
	}
	if strings.Contains(got, "staging") || !strings.Contains(got, "shop/deployment/api") {
		t.Errorf("carol's overview shows staging or not shop:\n%s", got)
	}
	if !strings.Contains(w.Body.String(), `aria-label="would-deny per day, 2026-11-18 to 2026-12-01: 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1. 1 in all`) {
		t.Errorf("carol's would-deny are not shop's alone (the scan of shop today):\n%s", got)
	}
	f.authz.allow = map[string]bool{}
	f.clock.Advance(DefaultAuthzCacheTTL)
	if got := text(f.do("GET", "/", nil, c).Body.String()); strings.Contains(got, "shop/") {
		t.Errorf("without permissions the overview shows shop:\n%s", got)
	}
}

// TestRuleFilterOffersEveryRule: the list's rule filter offers every rule
// ID a decision can carry, those a policy cannot configure included
// (implausible-build-time was missing): every RuleID constant of package
// policy.
func TestRuleFilterOffersEveryRule(t *testing.T) {
	fset := token.NewFileSet()
	paths, err := filepath.Glob("../policy/*.go")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, p := range paths {
		if strings.HasSuffix(p, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(file, func(n ast.Node) bool {
			vs, ok := n.(*ast.ValueSpec)
			if !ok {
				return true
			}
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "RuleID" {
				return true
			}
			for _, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok {
					s, _ := strconv.Unquote(lit.Value)
					ids = append(ids, s)
				}
			}
			return true
		})
	}
	if len(ids) < 20 || !slices.Contains(ids, string(policy.RuleImplausibleBuildTime)) {
		t.Fatalf("found rule IDs %v in ../policy, want them all", ids)
	}
	f := newFixture(t)
	c, _ := f.login("alice-token")
	page := f.do("GET", "/decisions", nil, c).Body.String()
	for _, id := range ids {
		if !strings.Contains(page, "<option>"+id+"</option>") {
			t.Errorf("the rule filter does not offer %s", id)
		}
	}
	// A rule this version does not know, from a link, is kept selected.
	if page := f.do("GET", "/decisions?rule=from-the-future", nil, c).Body.String(); !strings.Contains(page, "<option selected>from-the-future</option>") {
		t.Error("an unknown rule in the filter is not shown selected")
	}
}

// TestListPaging pages through 250 decisions, forward and back: each
// comes once, in order, with page numbers that add up.
func TestListPaging(t *testing.T) {
	f := newFixture(t)
	base := testDecisions()[0]
	var all []evidence.Decision
	for i := range 250 {
		d := base
		// Three at each time: the cursor must order by ID too.
		d.ID, d.Name, d.Time = fmt.Sprintf("p-%03d", i), "paged", t0.Add(-time.Hour+time.Duration(i/3)*time.Second)
		all = append(all, d)
	}
	if err := f.store.AddDecisions(t.Context(), all); err != nil {
		t.Fatal(err)
	}
	c, _ := f.login("alice-token")
	var ids []string
	var pages []string
	target := "/decisions?verdict=deny&since=2h&name=paged"
	for target != "" {
		body := f.do("GET", target, nil, c).Body.String()
		pages = append(pages, target)
		ids = append(ids, rowIDs(body)...)
		m := regexp.MustCompile(`<a href="([^"]*)" rel="next">`).FindStringSubmatch(body)
		if m == nil {
			break
		}
		target = html.UnescapeString(m[1])
		if len(pages) > 5 {
			t.Fatal("more pages than decisions")
		}
	}
	// rowIDs keeps each ID's last character; compare whole IDs instead.
	got := regexp.MustCompile(`href="/decisions/(p-[0-9]{3})"`)
	var whole []string
	for _, p := range pages {
		for _, m := range got.FindAllStringSubmatch(f.do("GET", p, nil, c).Body.String(), -1) {
			whole = append(whole, m[1])
		}
	}
	var want []string
	for i := 249; i >= 0; i-- {
		want = append(want, fmt.Sprintf("p-%03d", i))
	}
	if !slices.Equal(whole, want) {
		t.Fatalf("paging listed %d decisions %v…, want the 250 newest first", len(whole), whole[:min(len(whole), 5)])
	}
	if len(pages) != 3 {
		t.Errorf("%d pages, want 3 of at most 100", len(pages))
	}
	last := text(f.do("GET", pages[2], nil, c).Body.String())
	if !strings.Contains(last, "Decisions 201–250, newest first.") || strings.Contains(last, "Older →") {
		t.Errorf("the last page says:\n%s", last)
	}
	// Back from the last page: the second, as it was.
	body := f.do("GET", pages[2], nil, c).Body.String()
	m := regexp.MustCompile(`<a href="([^"]*)" rel="prev">`).FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no link to newer decisions on the last page")
	}
	back := f.do("GET", html.UnescapeString(m[1]), nil, c).Body.String()
	var backIDs []string
	for _, m := range got.FindAllStringSubmatch(back, -1) {
		backIDs = append(backIDs, m[1])
	}
	if !slices.Equal(backIDs, want[100:200]) || !strings.Contains(text(back), "Decisions 101–200") {
		t.Errorf("newer than the last page = %v…, want the second page", backIDs[:min(len(backIDs), 3)])
	}
	for _, bad := range []string{"before=x", "before=1_", "after=-5_a", "before=1_a&after=1_b"} {
		if w := f.do("GET", "/decisions?"+bad, nil, c); w.Code != http.StatusBadRequest {
			t.Errorf("GET /decisions?%s = %d, want 400", bad, w.Code)
		}
	}
}

func TestExport(t *testing.T) {
	f := newFixture(t)
	odd := testDecisions()[0]
	odd.ID, odd.Name, odd.User = "formula", "=cmd|' /C calc'!A0", "@evil"
	if err := f.store.AddDecision(t.Context(), odd); err != nil {
		t.Fatal(err)
	}
	c, _ := f.login("alice-token")
	w := f.do("GET", "/decisions.csv?verdict=deny&verdict=would-deny&verdict=warn&verdict=allow&limit=1&before=1_x", nil, c)
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "text/csv; charset=utf-8" ||
		!strings.HasPrefix(w.Header().Get("Content-Disposition"), `attachment; filename="decisions-20261201T120000Z.csv"`) {
		t.Fatalf("CSV export = %d %v", w.Code, w.Header())
	}
	rows, err := csv.NewReader(w.Body).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	// The page and limit do not apply: all five.
	if len(rows) != 6 || !slices.Equal(rows[0], csvHeader) {
		t.Fatalf("CSV export has %d rows, header %v; want 5 decisions", len(rows), rows[0])
	}
	var formula []string
	for _, r := range rows[1:] {
		if r[0] == "formula" {
			formula = r
		}
	}
	if formula == nil || formula[7] != "'=cmd|' /C calc'!A0" || formula[8] != "'@evil" || formula[9] != "host-built untrusted-egress" ||
		formula[11] != "registry.example/shop/api:1.4@sha256:"+strings.Repeat("a", 64) {
		t.Errorf("CSV row of the decision with a formula for a name: %q", formula)
	}

	w = f.do("GET", "/decisions.json?namespace=shop&verdict=deny", nil, c)
	var got []records.DecisionJSON
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || w.Code != http.StatusOK {
		t.Fatalf("JSON export = %d, %v\n%s", w.Code, err, w.Body)
	}
	d, _ := f.store.Decision(t.Context(), nodeBuiltID)
	want := records.ToJSON(d)
	if len(got) != 2 || got[1].ID != nodeBuiltID || got[1].Time != want.Time || !bytes.Equal(compactJSON(got[1].Images), compactJSON(want.Images)) {
		t.Errorf("JSON export = %+v, want the formula decision and %s as records", got, nodeBuiltID)
	}

	// A reader of shop exports shop's alone; a bad filter is refused.
	f.h.c.Random = cryptorand.Reader // a session of its own (fixedRandom would give alice's ID)
	cc, _ := f.login("carol-token")
	w = f.do("GET", "/decisions.json?verdict=deny&verdict=would-deny", nil, cc)
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil || len(got) != 2 || got[0].Namespace != "shop" || got[1].Namespace != "shop" {
		t.Errorf("carol's export = %v, %v; want shop's two denials", got, err)
	}
	if w := f.do("GET", "/decisions.csv?namespace=staging", nil, cc); w.Code != http.StatusForbidden {
		t.Errorf("carol's export of staging = %d, want 403", w.Code)
	}
	if w := f.do("GET", "/decisions.csv?verdict=maybe", nil, c); w.Code != http.StatusBadRequest {
		t.Errorf("export with a bad filter = %d, want 400", w.Code)
	}
}

func compactJSON(b []byte) []byte {
	var out bytes.Buffer
	if json.Compact(&out, b) != nil {
		return b
	}
	return out.Bytes()
}

func TestImagePage(t *testing.T) {
	f := newFixture(t)
	f.addHistory()
	built := t0.Add(-2 * time.Hour)
	if _, _, err := f.store.AddReport(t.Context(), evidence.Report{Node: "worker-3", Sensor: "ebpf", Reporter: "system:serviceaccount:buildguard-node-agent:node-agent",
		Builds: []evidence.Build{{Source: "agent", EventID: "b1", Tool: "docker", ImageID: "sha256:" + strings.Repeat("c", 64), Started: built, Finished: built.Add(time.Minute)}},
		Connections: []evidence.Connection{{Source: "agent", EventID: "c1", Time: built.Add(20 * time.Second), Process: "wget", PID: 4242,
			DestIP: netip.MustParseAddr("203.0.113.9"), DestPort: 8080}},
	}); err != nil {
		t.Fatal(err)
	}
	c, _ := f.login("alice-token")
	digest := "sha256:" + strings.Repeat("a", 64)
	w := f.do("GET", "/images/"+digest, nil, c)
	if w.Code != http.StatusOK {
		t.Fatalf("GET image = %d\n%s", w.Code, text(w.Body.String()))
	}
	checkGolden(t, "image.html.golden", w.Body.Bytes())
	got := text(w.Body.String())
	for _, want := range []string{
		"Image " + digest + " Admitted as registry.example/shop/api:1.4",
		"Decisions 5 · all its decisions in the list",
		"Rules found host-built 5 , untrusted-egress 5",
		"Fact: Signatures not checked by this policy",
		"worker-3 docker 2026-12-01 10:00:00 UTC 2026-12-01 10:01:00 UTC agent system:serviceaccount:buildguard-node-agent:node-agent 2026-12-01 10:00:20 UTC: wget (pid 4242) → 203.0.113.9:8080",
		"shop/Deployment/api 11:50:00 10m deny 4 , would-deny 1",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the image page does not say %q\n%s", want, got)
		}
	}
	// The list and the detail page lead to it.
	if !strings.Contains(f.do("GET", "/decisions", nil, c).Body.String(), `href="/images/`+digest+`"`) {
		t.Error("the list does not link to the image page")
	}
	if !strings.Contains(f.do("GET", "/decisions/"+nodeBuiltID, nil, c).Body.String(), `href="/images/`+digest+`"`) {
		t.Error("the detail page does not link to the image page")
	}
	f.h.c.Random = cryptorand.Reader // a session of its own
	cc, _ := f.login("carol-token")
	for target, want := range map[string]int{
		"/images/" + digest:                          http.StatusOK,
		"/images/sha256:" + strings.Repeat("b", 64):  http.StatusNotFound, // staging's
		"/images/sha256:" + strings.Repeat("9", 64):  http.StatusNotFound, // never seen
		"/images/sha256:abc":                         http.StatusNotFound,
		"/images/" + url.PathEscape("../../etc/pwd"): http.StatusNotFound,
	} {
		if w := f.do("GET", target, nil, cc); w.Code != want {
			t.Errorf("carol: GET %s = %d, want %d", target, w.Code, want)
		}
	}
}

// TestTimelineTones: one colour per meaning. A policy that checks
// signatures and finds them says so in green; one that checks none says
// so in grey; records from before checks were recorded say what is known.
func TestTimelineTones(t *testing.T) {
	d := evidence.Decision{ID: "x", Time: t0, Verdict: records.VerdictAllow, Mode: "enforce"}
	tones := func(im records.ImageRecord) string {
		var out []string
		for _, e := range Timeline(d, []records.ImageRecord{im}) {
			out = append(out, e.Kind+"="+e.Tone+" "+e.Title)
		}
		return strings.Join(out, "; ")
	}
	for _, tc := range []struct {
		name string
		im   records.ImageRecord
		want string
	}{
		{"checked, nothing found", records.ImageRecord{Image: "a", Digest: "sha256:1", Checks: []string{"signatures", "provenance"}},
			"signatures=ok Signed as required; provenance=ok Provenance as required; allow=ok Admitted"},
		{"not checked", records.ImageRecord{Image: "a", Digest: "sha256:1", Checks: []string{}},
			"signatures=info Signatures not checked by this policy; provenance=info Provenance not checked by this policy; allow=ok Admitted"},
		{"not resolved", records.ImageRecord{Image: "a", Checks: []string{}},
			"signatures=info Signatures not checked: the image was not resolved; provenance=info Provenance not checked: the image was not resolved; allow=ok Admitted"},
		{"an old record", records.ImageRecord{Image: "a", Digest: "sha256:1"},
			"signatures=info No signatures finding; provenance=info No provenance finding; allow=ok Admitted"},
		{"a warn finding, a stale VSA, an exception", records.ImageRecord{Image: "a", Digest: "sha256:1", Checks: []string{"provenance"},
			Exception: &records.ExceptionUsed{Name: "shop/x"},
			Findings: []records.FindingRecord{
				{Rule: "vsa-stale", Action: "warn", Message: "old"},
				{Rule: "implausible-build-time", Action: "warn", Message: "future", Evidence: map[string]json.RawMessage{
					"build": json.RawMessage(`{"node":"n1","started":"2026-12-01T13:00:00Z"}`)}},
				{Rule: "inconsistent-created-time", Action: "deny", Message: "contradicts", Evidence: map[string]json.RawMessage{
					"created": json.RawMessage(`"2026-11-01T00:00:00Z"`)}},
			}},
			"created=bad Image claims to be created; built=warn Built on node n1; signatures=info Signatures not checked by this policy; provenance=warn Provenance not as required; allow=warn Admitted by exception"},
	} {
		if got := tones(tc.im); got != tc.want {
			t.Errorf("%s: Timeline =\n%s\nwant\n%s", tc.name, got, tc.want)
		}
	}
}

// exceptionsFixture serves exceptions from a policy file's and an
// exceptions file, into which the UI grants.
func exceptionsFixture(t testing.TB) (*fixture, *policysource.ExceptionFile) {
	f := newFixture(t)
	path := filepath.Join(t.TempDir(), "exceptions.yaml")
	if err := os.WriteFile(path, []byte(`apiVersion: buildguard.dev/v1alpha1
kind: ExceptionList
exceptions:
  - name: by-hand
    namespace: staging
    images: ["registry.example/web/*"]
    reason: "INC-9: a week to rebuild"
    expires: "2026-12-05T00:00:00Z"
    approvedBy: dave
  - name: long-gone
    namespace: shop
    images: ["registry.example/shop/old@sha256:`+strings.Repeat("0", 64)+`"]
    reason: "old"
    expires: "2026-11-30T12:00:00Z"
`), 0o600); err != nil {
		t.Fatal(err)
	}
	xf, err := policysource.OpenExceptionFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Compile(policy.Spec{Exceptions: []policy.Exception{{Images: []string{"registry.example/base/*"}, Reason: "base images are vetted", Expires: "2027-06-01T00:00:00Z", ApprovedBy: "erin"}}})
	if err != nil {
		t.Fatal(err)
	}
	f.h.c.Granter = xf
	f.h.c.Exceptions = &FileExceptions{File: xf, Policy: func() *policy.Policy { return p }}
	f.exceptionsFile = path
	// Admissions the exceptions let through.
	used := testDecisions()[3]
	used.ID, used.Exceptions = "used-1", []string{"staging/by-hand"}
	used2 := used
	used2.ID, used2.Time = "used-2", t0.Add(-time.Minute)
	scanned := used
	scanned.ID, scanned.Operation = "u1/scan-20261201T000000Z", "SCAN"
	if err := f.store.AddDecisions(t.Context(), []evidence.Decision{used, used2, scanned}); err != nil {
		t.Fatal(err)
	}
	return f, xf
}

func TestExceptionsPage(t *testing.T) {
	f, _ := exceptionsFixture(t)
	f.h.c.Random = cryptorand.Reader // each user a session of their own
	c, csrf := f.login("alice-token")
	// A grant from a decision's page shows up.
	w := f.do("POST", "/decisions/"+nodeBuiltID+"/exceptions", grantValues(csrf, func(v url.Values) { v.Set("expires", "2026-12-20T12:00") }), c)
	if w.Code != http.StatusSeeOther {
		t.Fatalf("grant = %d\n%s", w.Code, text(w.Body.String()))
	}
	w = f.do("GET", "/exceptions", nil, c)
	if w.Code != http.StatusOK {
		t.Fatalf("GET /exceptions = %d\n%s", w.Code, text(w.Body.String()))
	}
	body := w.Body.String()
	got := text(body)
	inForce, expired, _ := strings.Cut(got, "Expired")
	for _, want := range []string{
		// Soonest first; by-hand expires within 7 days and is marked.
		"by-hand exceptions file namespace staging registry.example/web/* INC-9: a week to rebuild dave 2026-12-05 00:00:00 UTC expires in 3d12h 2 2026-12-01 11:59:00 UTC Revoke",
		" exceptions file namespace shop registry.example/shop/api@sha256:" + strings.Repeat("a", 64) + " INC-1234: rebuilt in the pipeline tomorrow alice granted in this UI by alice, 2026-12-01 12:00:00 UTC from decision 0d1e5a7c 2026-12-20 12:00:00 UTC in 19d 0 never Revoke",
		"exceptions[0] policy file every namespace registry.example/base/* base images are vetted erin 2027-06-01 00:00:00 UTC",
	} {
		if !strings.Contains(inForce, want) {
			t.Errorf("in force, the page does not say %q\n%s", want, inForce)
		}
	}
	if !strings.Contains(expired, "long-gone exceptions file namespace shop") || strings.Contains(inForce, "long-gone") {
		t.Errorf("long-gone is not listed as expired alone:\n%s", got)
	}
	if strings.Count(body, `class="expiring"`) != 1 {
		t.Errorf("%d rows marked expiring, want by-hand alone", strings.Count(body, `class="expiring"`))
	}
	if !strings.Contains(body, `href="/decisions?exception=staging%2Fby-hand&amp;since=all&amp;verdict=deny`) {
		t.Error("the use count does not link to the decisions that used it")
	}
	if strings.Count(body, `action="/exceptions/revoke"`) != 3 {
		t.Errorf("%d revoke buttons, want those of the exceptions file (3), not the policy file's", strings.Count(body, `action="/exceptions/revoke"`))
	}
	// The overview counts those expiring soon.
	if got := text(f.do("GET", "/", nil, c).Body.String()); !strings.Contains(got, "1 exception expires within 7 days.") {
		t.Errorf("the overview does not count the exception expiring soon:\n%s", got)
	}
	// Carol sees shop's; bob may list them but not revoke.
	cc, _ := f.login("carol-token")
	got = text(f.do("GET", "/exceptions", nil, cc).Body.String())
	if strings.Contains(got, "by-hand") || strings.Contains(got, "base images") || !strings.Contains(got, "2 exceptions in namespaces where you may not list them are not shown.") {
		t.Errorf("carol's exceptions page:\n%s", got)
	}
	bc, _ := f.login("bob-token")
	if body := f.do("GET", "/exceptions", nil, bc).Body.String(); strings.Contains(body, `action="/exceptions/revoke"`) || !strings.Contains(body, "by-hand") {
		t.Errorf("bob's exceptions page: revoke buttons, or no exceptions")
	}
}

func TestRevoke(t *testing.T) {
	form := func(csrf string, mod func(url.Values)) url.Values {
		v := url.Values{"csrf": {csrf}, "source": {SourceFile}, "namespace": {"staging"}, "name": {"by-hand"}}
		if mod != nil {
			mod(v)
		}
		return v
	}
	for _, tc := range []struct {
		name, token string
		mod         func(url.Values)
		hdr         []string
		want        int
		body        string
	}{
		{name: "revoked", token: "alice-token", want: http.StatusSeeOther},
		{name: "no CSRF token", token: "alice-token", mod: func(v url.Values) { v.Del("csrf") }, want: http.StatusForbidden, body: "does not match your session"},
		{name: "cross-site", token: "alice-token", hdr: []string{"Sec-Fetch-Site", "cross-site"}, want: http.StatusForbidden, body: "did not come from this site"},
		{name: "no delete permission", token: "bob-token", want: http.StatusForbidden, body: "You (bob) may not delete buildpolicyexceptions in namespace staging."},
		{name: "another namespace", token: "carol-token", want: http.StatusForbidden, body: "may not delete buildpolicyexceptions in namespace staging"},
		{name: "a policy file's", token: "alice-token", mod: func(v url.Values) { v.Set("source", SourcePolicyFile) }, want: http.StatusBadRequest, body: "does not name an exception that can be revoked"},
		{name: "a source the UI does not read", token: "alice-token", mod: func(v url.Values) { v.Set("source", SourceResource) }, want: http.StatusBadRequest, body: "BuildPolicyException exceptions are not revoked here"},
		{name: "no such exception", token: "alice-token", mod: func(v url.Values) { v.Set("name", "nope") }, want: http.StatusNotFound, body: "staging/nope was not revoked"},
		{name: "bad name", token: "alice-token", mod: func(v url.Values) { v.Set("name", "../x") }, want: http.StatusBadRequest, body: "does not name an exception"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, xf := exceptionsFixture(t)
			c, csrf := f.login(tc.token)
			w := f.do("POST", "/exceptions/revoke", form(csrf, tc.mod), c, tc.hdr...)
			if w.Code != tc.want || !strings.Contains(text(w.Body.String()), tc.body) {
				t.Fatalf("POST = %d, want %d saying %q\n%s", w.Code, tc.want, tc.body, text(w.Body.String()))
			}
			raw, err := os.ReadFile(f.exceptionsFile)
			if err != nil {
				t.Fatal(err)
			}
			if gone := !strings.Contains(string(raw), "by-hand"); gone != (tc.want == http.StatusSeeOther) {
				t.Fatalf("after the POST, by-hand is in the file: %v\n%s", !gone, raw)
			}
			if tc.want != http.StatusSeeOther {
				return
			}
			if xf.Exceptions("staging").Len() != 0 {
				t.Error("the revoked exception still applies")
			}
			if !strings.Contains(string(raw), "long-gone") {
				t.Error("revoking dropped another exception")
			}
			page := text(f.do("GET", w.Header().Get("Location"), nil, c).Body.String())
			if !strings.Contains(page, "Exception staging/by-hand revoked.") || strings.Contains(page, "INC-9") {
				t.Errorf("after revoking, the page says:\n%s", page)
			}
			// A confirmation link made elsewhere says nothing.
			if page := text(f.do("GET", "/exceptions?revoked=staging%2Fother&sig=AAAA", nil, c).Body.String()); strings.Contains(page, "revoked.") {
				t.Error("a forged confirmation is shown")
			}
		})
	}
}
