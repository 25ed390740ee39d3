package records

import (
	"net/url"
	"strings"
	"testing"
	"unicode"
)

func TestParseReviewURL(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: ""},
		{in: "https://buildguard.example", want: "https://buildguard.example"},
		{in: "https://buildguard.example/", want: "https://buildguard.example"},
		{in: "http://127.0.0.1:8443", want: "http://127.0.0.1:8443"},
		{in: "https://ops.example/buildguard/", want: "https://ops.example/buildguard"},
		{in: "https://ops.example/build guard", want: "https://ops.example/build%20guard"},
		{in: "https://[::1]:9443/x//", want: "https://[::1]:9443/x"},
		{in: "buildguard.example", err: "want an absolute https:// URL"},
		{in: "/decisions", err: "want an absolute https:// URL"},
		{in: "ftp://buildguard.example", err: "want an absolute https:// URL"},
		{in: "https://", err: "want an absolute https:// URL"},
		{in: "https://alice:pw@buildguard.example", err: "want no credentials, query or fragment"},
		{in: "https://buildguard.example/?next=/", err: "want no credentials, query or fragment"},
		{in: "https://buildguard.example/?", err: "want no credentials, query or fragment"},
		{in: "https://buildguard.example/#top", err: "want no credentials, query or fragment"},
		{in: "https://buildguard.example/%zz", err: "invalid URL escape"},
		{in: "https://" + strings.Repeat("a", 100) + ".example", err: "longer than 100 characters"},
	} {
		u, err := ParseReviewURL(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseReviewURL(%q) = %q, %v; want an error saying %q", tc.in, u, err, tc.err)
		case tc.err == "" && (err != nil || u.String() != tc.want):
			t.Errorf("ParseReviewURL(%q) = %q, %v; want %q", tc.in, u, err, tc.want)
		case tc.err == "" && u.IsZero() != (tc.want == ""):
			t.Errorf("ParseReviewURL(%q).IsZero() = %v", tc.in, u.IsZero())
		}
	}
}

// TestReviewURLDecision: a decision's link is the UI's /decisions/ID with
// the ID one path segment, as the UI's route reads it back.
func TestReviewURLDecision(t *testing.T) {
	u, err := ParseReviewURL("https://ops.example/buildguard/")
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{
		"0d1e5a7c-1111-4a4a-9b9b-000000000001": "https://ops.example/buildguard/decisions/0d1e5a7c-1111-4a4a-9b9b-000000000001",
		"u7/scan-20261201T060000Z":             "https://ops.example/buildguard/decisions/u7%2Fscan-20261201T060000Z",
		"a b?c#d":                              "https://ops.example/buildguard/decisions/a%20b%3Fc%23d",
		"":                                     "",
	} {
		if got := u.Decision(id); got != want {
			t.Errorf("Decision(%q) = %q, want %q", id, got, want)
		}
	}
	if got := (ReviewURL{}).Decision("x"); got != "" {
		t.Errorf("the zero ReviewURL links %q, want nothing", got)
	}
}

func FuzzParseReviewURL(f *testing.F) {
	for _, s := range []string{"https://buildguard.example", "http://127.0.0.1:8443/ui/", "https://a@b", "https://x/%2F?#", "javascript:alert(1)", "https://[::1]:0/"} {
		f.Add(s, "0d1e5a7c-1111-4a4a-9b9b-000000000001")
	}
	f.Add("https://x.example/p", "u7/scan-20261201T060000Z")
	f.Fuzz(func(t *testing.T, s, id string) {
		u, err := ParseReviewURL(s)
		if err != nil || u.IsZero() {
			return
		}
		// What was accepted is accepted again as itself.
		if again, err := ParseReviewURL(u.String()); err != nil || again != u {
			t.Fatalf("ParseReviewURL(%q) = %q, which parses as %q, %v", s, u, again, err)
		}
		link := u.Decision(id)
		if id == "" {
			return
		}
		// The link is one token (it ends an Event's message), and its
		// last path segment is the ID.
		if strings.ContainsFunc(link, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
			t.Fatalf("Decision(%q) of %q = %q: not one token", id, s, link)
		}
		p, err := url.Parse(link)
		if err != nil {
			t.Fatalf("Decision(%q) of %q = %q: %v", id, s, link, err)
		}
		seg := p.EscapedPath()[strings.LastIndex(p.EscapedPath(), "/")+1:]
		if got, err := url.PathUnescape(seg); err != nil || got != id || p.Host != must(url.Parse(u.String())).Host {
			t.Fatalf("Decision(%q) of %q = %q: its last segment is %q, host %q", id, s, link, got, p.Host)
		}
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
