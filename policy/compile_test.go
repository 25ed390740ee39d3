package policy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

func TestParseErrors(t *testing.T) {
	const head = "apiVersion: buildguard.dev/v1alpha1\nkind: Policy\n"
	tests := []struct {
		name string
		in   string
		want string // substring of the error
	}{
		{"empty", "", "empty policy file"},
		{"unknown field names field and line", head + "mode: enforce\nfreshnes:\n  minAge: 1m\n", "line 4: field freshnes not found"},
		{"nested unknown field", head + "freshness:\n  minage: 1m\n", "line 4: field minage not found"},
		{"wrong apiVersion", "apiVersion: v1\nkind: Policy\n", `apiVersion: "v1" is not supported`},
		{"wrong kind", "apiVersion: buildguard.dev/v1alpha1\nkind: Pod\n", `kind: "Pod" is not supported`},
		{"bad mode", head + "mode: strict\n", `mode: "strict" is not one of enforce, warn, audit`},
		{"bad failurePolicy", head + "failurePolicy: ignore\n", "failurePolicy"},
		{"bad duration", head + "freshness:\n  minAge: ten minutes\n", `invalid duration "ten minutes"`},
		{"negative duration", head + "freshness:\n  minAge: -1m\n", "freshness.minAge: must not be negative"},
		{"unknown rule", head + "rules:\n  fresh: deny\n", "rules.fresh: unknown rule"},
		{"bad action", head + "rules:\n  fresh-image: block\n", `rules.fresh-image: "block" is not one of deny, warn, ignore`},
		{"bad glob", head + "registries:\n  allow: [\"ghcr.io/a b\"]\n", "registries.allow[0]"},
		{"bad source", head + "trustedSources: [\"10.0.0.0/33\"]\n", "trustedSources"},
		{"exception without expiry", head + "exceptions:\n- images: [\"ghcr.io/acme/*\"]\n  reason: INC-1\n", "exceptions[0].expires: required"},
		{"exception with bad expiry", head + "exceptions:\n- images: [\"ghcr.io/acme/*\"]\n  reason: INC-1\n  expires: tomorrow\n", `exceptions[0].expires: "tomorrow" is not RFC 3339`},
		{"exception without reason", head + "exceptions:\n- images: [\"ghcr.io/acme/*\"]\n  expires: 2026-12-01T00:00:00Z\n", "exceptions[0].reason: required"},
		{"exception with bad digest", head + "exceptions:\n- images: [\"ghcr.io/acme/x@sha256:123\"]\n  reason: r\n  expires: 2026-12-01T00:00:00Z\n", "exceptions[0].images[0]"},
		{"two documents", head + "---\n" + head, "more than one YAML document"},
		{"not yaml", "{{{", "decode"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse(%q) error = %v, want it to contain %q", tt.in, err, tt.want)
			}
		})
	}
}

func TestParseFieldError(t *testing.T) {
	_, err := Parse([]byte("apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nmode: nope\n"))
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "mode" {
		t.Fatalf("Parse error = %#v, want a *FieldError for mode", err)
	}
}

func TestParseDefaults(t *testing.T) {
	p, err := Parse([]byte("apiVersion: buildguard.dev/v1alpha1\nkind: Policy\n"))
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode() != ModeEnforce || p.FailurePolicy() != FailDeny || p.minAge != 10*time.Minute || p.maxClockSkew != time.Minute {
		t.Errorf("defaults = %s %s %s %s, want enforce deny 10m 1m", p.Mode(), p.FailurePolicy(), p.minAge, p.maxClockSkew)
	}
	for _, r := range Rules() {
		want, _ := DefaultAction(r)
		if got := p.Action(r); got != want {
			t.Errorf("Action(%s) = %s, want %s", r, got, want)
		}
	}
}

func TestRegistryAllowed(t *testing.T) {
	p, err := Compile(Spec{Registries: Registries{Allow: []string{
		"ghcr.io/acme/*", "docker.io/library/*", "registry.acme.internal:5000/**", "169.254.169.254/**", "[fd00:ec2::254]/**",
	}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		image string
		want  bool
	}{
		{"ghcr.io/acme/shop:1.4", true},
		{"GHCR.io/acme/shop:1.4", true},
		{"ghcr.io/acme/team/shop:1", false}, // * stays in one segment
		{"ghcr.io/acmex/shop:1", false},
		{"ghcr.io/evil/acme/shop:1", false},
		{"nginx", true},
		{"docker.io/library/nginx:1.27", true},
		{"docker.io/someone/nginx", false},
		{"registry.acme.internal:5000/a/b/c:1", true},
		{"registry.acme.internal:5001/a:1", false},
		{"169.254.169.254/x/y:1", false}, // never, whatever the list says
		{"[fd00:ec2::254]/x/y:1", false},
	}
	for _, tt := range tests {
		ref, err := name.ParseReference(tt.image)
		if err != nil {
			t.Fatalf("ParseReference(%q): %v", tt.image, err)
		}
		if got := p.RegistryAllowed(ref.Context()); got != tt.want {
			t.Errorf("RegistryAllowed(%q) = %v, want %v", tt.image, got, tt.want)
		}
	}
}

func TestForbiddenHost(t *testing.T) {
	tests := map[string]bool{
		"169.254.169.254":          true,
		"169.254.169.254:80":       true,
		"[fd00:ec2::254]":          true,
		"[fe80::1]:5000":           true,
		"metadata.google.internal": true,
		"ghcr.io":                  false,
		"127.0.0.1:5000":           false,
		"10.1.2.3":                 false,
		"[::ffff:169.254.1.1]":     true,
		// The forms inet_aton, and so many resolvers and proxies, take
		// for 169.254.169.254: decimal, hex, octal, and shortened.
		"2852039166:80":             true,
		"0xa9fea9fe:80":             true,
		"0XA9FEA9FE":                true,
		"0251.0376.0251.0376":       true,
		"0251.0376.0251.0376:5000":  true,
		"0xa9.0xfe.0xa9.0xfe":       true,
		"169.254.43518":             true,
		"169.16689662":              true,
		"0xa9.254.0251.254":         true,
		"025177524776":              true,
		"169.254.169.254.":          true,
		"169.254.169.254.:443":      true,
		"2852039166.":               true,
		"metadata.google.internal.": true,
		"metadata.:80":              true,
		"[fe80::1%25eth0]:5000":     true,
		"[64:ff9b::a9fe:a9fe]":      true,
		"[::a9fe:a9fe]:5000":        true,
		"fe80::1":                   true,
		"[64:ff9b::a9fe:a9fe]:443":  true,
		// Look alike, are not.
		"3232235777:80":          false, // 192.168.1.1
		"0x7f000001:5000":        false, // 127.0.0.1
		"0251.0376.0251.0376.io": false, // a name; checked when it resolves
		"169.254.169.254.nip.io": false,
		"1.2.3.4.":               false,
		"4294967296":             false, // 2^32: not an address
		"0x1ffffffff":            false,
		"08.1.2.3":               false, // 8 is no octal digit
		"[64:ff9b::a01:203]":     false, // 10.1.2.3
		"[::1]:5000":             false,
		"metadata.example.com":   false,
	}
	for host, want := range tests {
		if got := ForbiddenHost(host); got != want {
			t.Errorf("ForbiddenHost(%q) = %v, want %v", host, got, want)
		}
	}
}
