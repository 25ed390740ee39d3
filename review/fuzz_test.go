package review

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/records"
)

// FuzzExportRow: any decision, whatever its workload's name, user or
// recorded images hold, is one CSV record of the header's columns that
// reads back as written, with no cell a spreadsheet takes for a formula;
// and one JSON record.
func FuzzExportRow(f *testing.F) {
	f.Add("0d1e5a7c-1111", "shop", "api", "system:serviceaccount:ci:deployer", "host-built", `[{"image":"registry.example/a:1","digest":"sha256:aa"}]`)
	f.Add("x", "shop", "=cmd|' /C calc'!A0", "@evil", "+1", `[{"scope":"workload"}]`)
	f.Add("a\"b", "-", "\r\n", "\t", ",", `not json`)
	f.Add("", "", "", "", "", `[{"image":"=1+1","digest":"-2"}]`)
	f.Fuzz(func(t *testing.T, id, ns, name, user, rule, images string) {
		d := evidence.Decision{ID: id, Time: t0, Namespace: ns, Kind: "Pod", Name: name, User: user,
			Verdict: records.VerdictDeny, Mode: "enforce", Rules: []string{rule}, Images: json.RawMessage(images)}
		row := csvRow(d)
		if len(row) != len(csvHeader) {
			t.Fatalf("csvRow has %d cells, the header %d", len(row), len(csvHeader))
		}
		for i, c := range row {
			if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
				t.Fatalf("cell %s = %q: a spreadsheet formula", csvHeader[i], c)
			}
		}
		var b bytes.Buffer
		w := csv.NewWriter(&b)
		w.Write(csvHeader)
		w.Write(row)
		w.Flush()
		got, err := csv.NewReader(&b).ReadAll()
		if err != nil {
			t.Fatalf("the CSV does not read back: %v\n%s", err, b.String())
		}
		// encoding/csv reads a lone \r of a quoted field as \n: compare
		// as a reader sees it.
		norm := func(s string) string { return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\r", "\n") }
		if len(got) != 2 || !slices.EqualFunc(got[1], row, func(a, b string) bool { return norm(a) == norm(b) }) {
			t.Fatalf("the CSV reads back as %q, want %q", got, row)
		}
		var rec records.DecisionJSON
		if !json.Valid([]byte(images)) {
			return // a record of images that is not JSON is not written as such
		}
		out, err := json.Marshal(records.ToJSON(d))
		if err != nil || json.Unmarshal(out, &rec) != nil || (utf8.ValidString(name) && rec.Name != name) {
			t.Fatalf("the JSON record %s (%v) does not read back", out, err)
		}
	})
}

// FuzzHandler sends any query, path and form to the pages of a logged-in
// user: the answer is a page, a redirect, a refusal or the user's error,
// never our fault (5xx) or a panic; an export that answers 200 is a CSV
// file or a JSON array of records.
func FuzzHandler(f *testing.F) {
	fx, _ := exceptionsFixture(f)
	fx.addHistory()
	c, csrf := fx.login("alice-token")
	for _, s := range []struct{ method, path, query string }{
		{"GET", "/", ""},
		{"GET", "/", "since=7d"},
		{"GET", "/decisions", "since=all&verdict=deny&verdict=allow&limit=2&before=1796126400000000_h-shop-1d&page=2"},
		{"GET", "/decisions", "after=1796126400000000_x&day=2026-11-30&rule=host-built&image=registry.example/*"},
		{"GET", "/decisions", "exception=staging%2Fby-hand&scan=scan-20261130T060000Z&kind=Deployment&name=api"},
		{"GET", "/decisions.csv", "since=all&namespace=shop"},
		{"GET", "/decisions.json", "since=all&verdict=would-deny"},
		{"GET", "/exceptions", "revoked=staging%2Fby-hand&sig=AAAA"},
		{"GET", "/images/sha256:" + strings.Repeat("a", 64), ""},
		{"GET", "/decisions/" + nodeBuiltID, "granted=x&sig=y"},
		{"GET", "/decisions/u9%2Fscan-20261130T060000Z/raw", ""},
		{"POST", "/exceptions/revoke", "source=exceptions+file&namespace=staging&name=by-hand&uid="},
		{"POST", "/exceptions/revoke", "source=BuildPolicyException&namespace=shop&name=x"},
		{"POST", "/decisions/" + nodeBuiltID + "/exceptions", "image=registry.example/shop/api:1.4@sha256:" + strings.Repeat("a", 64) + "&reason=INC-1&expires=2026-12-02T12:00"},
	} {
		f.Add(s.method, s.path, s.query)
	}
	f.Fuzz(func(t *testing.T, method, path, query string) {
		if method != "GET" {
			method = "POST"
		}
		target := (&url.URL{Path: "/" + strings.TrimPrefix(path, "/"), RawQuery: query}).RequestURI()
		var form url.Values
		if method == "POST" {
			var err error
			if form, err = url.ParseQuery(query); err != nil {
				return
			}
			form.Set("csrf", csrf)
			target = (&url.URL{Path: "/" + strings.TrimPrefix(path, "/")}).RequestURI()
		}
		if _, err := url.ParseRequestURI(target); err != nil || strings.ContainsFunc(target, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
			return // not a request line an HTTP server reads
		}
		fx.t = t
		w := fx.do(method, target, form, c)
		if w.Code >= 500 || w.Code < 200 {
			t.Fatalf("%s %s (%q) = %d\n%s", method, target, query, w.Code, text(w.Body.String()))
		}
		if w.Code != http.StatusOK {
			return
		}
		switch {
		case strings.HasPrefix(w.Header().Get("Content-Type"), "text/csv"):
			rows, err := csv.NewReader(w.Body).ReadAll()
			if err != nil || len(rows) == 0 || !slices.Equal(rows[0], csvHeader) {
				t.Fatalf("GET %s: a CSV export that does not read (%v)", target, err)
			}
		case strings.HasPrefix(w.Header().Get("Content-Type"), "application/json") && strings.Contains(w.Header().Get("Content-Disposition"), "attachment"):
			var ds []records.DecisionJSON
			if err := json.Unmarshal(w.Body.Bytes(), &ds); err != nil {
				t.Fatalf("GET %s: a JSON export that does not read: %v", target, err)
			}
			for _, d := range ds {
				if _, err := time.Parse(time.RFC3339Nano, d.Time); err != nil || d.ID == "" {
					t.Fatalf("GET %s: exported %+v", target, d)
				}
			}
		}
	})
}
