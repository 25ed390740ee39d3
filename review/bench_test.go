package review

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/testpostgres"
	"buildguard.dev/buildguard/records"
)

// The store the pages are measured over: a busy cluster's two weeks and
// more, as docs/benchmarks.md describes.
const (
	benchDecisions  = 100_000
	benchNamespaces = 40
	benchWorkloads  = 10 // per namespace
	benchImages     = 300
	benchDays       = 16 // the overview counts 14 of them
	benchScans      = 14 // one audit scan a day, of benchScanned workloads
	benchScanned    = 200
	benchBatch      = 1000
)

// benchStore seeds st with benchDecisions decisions made from the
// fixture's four records: spread evenly over benchDays before t0, over
// namespaces, workloads and images; 70% allowed, 10% each warned, denied
// and would-be denied; and benchScans audit scans.
func benchStore(b *testing.B, st evidence.Store) {
	b.Helper()
	tmpl := testDecisions() // deny, would-deny, allow, warn
	verdictOf := func(i int) evidence.Decision {
		switch i % 10 {
		case 0:
			return tmpl[0]
		case 1:
			return tmpl[1]
		case 2:
			return tmpl[3]
		}
		return tmpl[2]
	}
	digests := []string{"sha256:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("b", 64),
		"sha256:" + strings.Repeat("e", 64), "sha256:" + strings.Repeat("f", 64)}
	span := time.Duration(benchDays) * 24 * time.Hour
	scanned := benchScans * benchScanned
	batch := make([]evidence.Decision, 0, benchBatch)
	for i := range benchDecisions {
		d := verdictOf(i)
		ns := i % benchNamespaces
		d.Namespace = fmt.Sprintf("team-%02d", ns)
		d.Name = fmt.Sprintf("svc-%d", (i/benchNamespaces)%benchWorkloads)
		d.Time = t0.Add(-span + time.Duration(i)*span/benchDecisions)
		d.ID = fmt.Sprintf("b%07d-1b7d-4c3a-9e51-0d2b7a4c8f10", i)
		// Each decision's image is one of benchImages digests.
		img := fmt.Sprintf("sha256:%064x", (i*7919)%benchImages)
		images := string(d.Images)
		for _, dg := range digests {
			images = strings.ReplaceAll(images, dg, img)
		}
		d.Images = []byte(images)
		if i < scanned {
			// The scans: the newest benchScans days, a day's at 06:00.
			day := i / benchScanned
			at := t0.Truncate(24*time.Hour).AddDate(0, 0, -day).Add(6*time.Hour + time.Duration(i%benchScanned)*time.Second)
			if at.After(t0) {
				at = at.AddDate(0, 0, -benchScans)
			}
			d.Time, d.Operation, d.Mode = at, "SCAN", "audit"
			d.ID = fmt.Sprintf("s%07d/scan-%s", i, at.Truncate(24*time.Hour).Add(6*time.Hour).Format("20060102T150405Z"))
			if d.Verdict == records.VerdictDeny {
				d.Verdict = records.VerdictWouldDeny
			}
		}
		batch = append(batch, d)
		if len(batch) == benchBatch {
			if err := st.AddDecisions(context.Background(), batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

// BenchmarkPages renders the review UI's pages over 100,000 stored
// decisions, with SQLite and with PostgreSQL, and reports the median and
// 99th percentile of the time to render each, from the request to the
// last byte: the overview for a user who may list every namespace and
// for one who may list 3 of 40 (a SubjectAccessReview per namespace,
// answered from memory here); the list's first page, its 100th page (a
// cursor 10,000 decisions deep), one namespace's (2,500 decisions), an
// image glob; an image's page; and the CSV export of 10,000 decisions
// (one workload name's, in every namespace).
//
// Run with -benchtime 200x or more: a 99th percentile needs 100 samples.
func BenchmarkPages(b *testing.B) {
	backends := []struct {
		name string
		// open returns an empty store, and a func that brings the
		// planner's statistics up to date once it is seeded.
		open func(b *testing.B) (evidence.Store, func())
	}{
		{"sqlite", func(b *testing.B) (evidence.Store, func()) {
			st, err := evidence.OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "review.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			return st, func() {} // the store plans without statistics
		}},
		{"postgres", func(b *testing.B) (evidence.Store, func()) {
			dsn := testpostgres.Start(b).NewDatabase(b)
			st, err := evidence.OpenPostgres(context.Background(), dsn)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { st.Close() })
			// What autovacuum does after a table has grown by a tenth: a
			// store that grew to 100,000 decisions over two weeks has
			// been analyzed many times.
			return st, func() {
				conn, err := pgx.Connect(context.Background(), dsn)
				if err != nil {
					b.Fatal(err)
				}
				defer conn.Close(context.Background())
				if _, err := conn.Exec(context.Background(), "ANALYZE"); err != nil {
					b.Fatal(err)
				}
			}
		}},
	}
	for _, be := range backends {
		b.Run(be.name, func(b *testing.B) {
			st, analyze := be.open(b)
			start := time.Now()
			benchStore(b, st)
			analyze()
			b.Logf("%s: %d decisions stored in %v", be.name, benchDecisions, time.Since(start).Round(time.Millisecond))
			tokens, err := ParseTokens([]byte("0123456789abcdef0123,alice,1\n0123456789abcdef0124,carol,2\n"))
			if err != nil {
				b.Fatal(err)
			}
			authz := &fakeAuthz{allow: map[string]bool{"alice list decisions *": true,
				"carol list decisions team-01": true, "carol list decisions team-02": true, "carol list decisions team-03": true}}
			h, err := New(Config{Store: st, Authenticator: tokens, Authorizer: authz, Clock: clocktest.New(t0),
				Key: []byte(strings.Repeat("k", 32))})
			if err != nil {
				b.Fatal(err)
			}
			login := func(token string) *http.Cookie {
				r := httptest.NewRequest("POST", "/login", strings.NewReader(url.Values{"token": {token}}.Encode()))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				r.Header.Set("Sec-Fetch-Site", "same-origin")
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				for _, c := range w.Result().Cookies() {
					if c.Name == CookieName {
						return c
					}
				}
				b.Fatalf("login: %d", w.Code)
				return nil
			}
			alice, carol := login("0123456789abcdef0123"), login("0123456789abcdef0124")
			get := func(target string, c *http.Cookie) *httptest.ResponseRecorder {
				r := httptest.NewRequest("GET", target, nil)
				r.AddCookie(c)
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != http.StatusOK {
					b.Fatalf("GET %s = %d\n%s", target, w.Code, text(w.Body.String()))
				}
				return w
			}
			// The 100th page: follow "Older" 99 times.
			deep := "/decisions?since=all"
			for range 99 {
				m := regexp.MustCompile(`<a href="([^"]*)" rel="next">`).FindStringSubmatch(get(deep, alice).Body.String())
				if m == nil {
					b.Fatal("the list ends before its 100th page")
				}
				deep = strings.ReplaceAll(m[1], "&amp;", "&")
			}
			for _, p := range []struct {
				name, target string
				c            *http.Cookie
				want         string
			}{
				{"overview", "/", alice, "Decisions of the last 14 days"},
				{"overview-3-namespaces", "/", carol, "Only decisions in namespaces you may list are counted."},
				{"list", "/decisions?since=all", alice, "Decisions 1–100, newest first."},
				{"list-page-100", deep, alice, "Decisions 9901–10000, newest first."},
				{"list-namespace", "/decisions?since=all&namespace=team-07&verdict=deny&verdict=would-deny&verdict=warn&verdict=allow", alice, "Decisions 1–100"},
				{"list-image-glob", "/decisions?since=all&image=" + url.QueryEscape("sha256:0000000000000000000000000000000000000000000000000000000000000*"), alice, "Decisions 1–100"},
				{"image", "/images/" + fmt.Sprintf("sha256:%064x", 7), alice, "Decisions"},
				{"export-10000", "/decisions.csv?since=all&name=svc-3&verdict=deny&verdict=would-deny&verdict=warn&verdict=allow", alice, "id,time,verdict"},
			} {
				b.Run(p.name, func(b *testing.B) {
					if got := get(p.target, p.c).Body.String(); !strings.Contains(text(got), p.want) && !strings.Contains(got, p.want) {
						b.Fatalf("GET %s does not say %q:\n%.2000s", p.target, p.want, text(got))
					}
					var took []time.Duration
					for b.Loop() {
						t := time.Now()
						get(p.target, p.c)
						took = append(took, time.Since(t))
					}
					slices.Sort(took)
					at := func(q float64) float64 {
						return float64(took[min(len(took)-1, int(q*float64(len(took))))].Microseconds()) / 1000
					}
					b.ReportMetric(at(0.50), "p50-ms")
					b.ReportMetric(at(0.99), "p99-ms")
					b.ReportMetric(0, "ns/op") // the percentiles say it
				})
			}
		})
	}
}
