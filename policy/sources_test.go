package policy

import (
	"strings"
	"testing"
)

func TestSourcesURLPrefix(t *testing.T) {
	s, err := ParseSources([]string{"github.com/tianon/gosu/releases/", "github.com/acme/tool", "*.githubusercontent.com/docker/docker/", "deb.debian.org"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host, path string
		want       bool
	}{
		{"github.com", "/tianon/gosu/releases/download/1.17/gosu-amd64", true},
		{"GitHub.com.", "/tianon/gosu/releases/download/1.17/gosu-amd64", true},
		{"github.com", "/tianon/gosu/releases/", true},
		{"github.com", "/tianon/gosu/releases", false}, // the prefix ends in a slash: inside it only
		{"github.com", "/tianon/gosu/archive/x.tgz", false},
		{"github.com", "/tianon/gosu/releases/../../../evil/miner/releases/x", false},
		{"github.com", "/tianon/gosu/releases/%2e%2e/%2e%2e/evil", false},
		{"github.com", "/tianon%2Fgosu/releases/x", false},
		{"github.com", "/tianon/gosu/releases/download/1.17/gosu-%61md64", true}, // plain escapes decode
		{"github.com", `/tianon/gosu/releases/..\evil`, false},
		{"github.com", "/acme/tool", true},
		{"github.com", "/acme/tool/releases/v1/tool", true},
		{"github.com", "/acme/tool-evil/releases/v1/tool", false},
		{"github.com", "/ACME/tool/x", false}, // paths are case-sensitive
		{"github.com", "/xmrig/xmrig/releases/download/v6/xmrig.tgz", false},
		{"raw.githubusercontent.com", "/docker/docker/65cf/hack/dind", true},
		{"githubusercontent.com", "/docker/docker/65cf/hack/dind", false}, // a glob is subdomains only
		{"objects.githubusercontent.com", "/other/x", false},
		{"evilgithub.com", "/tianon/gosu/releases/x", false},
		{"203.0.113.9", "/tianon/gosu/releases/x", false},
		{"deb.debian.org", "/anything", true}, // a host entry trusts every path
	}
	for _, tt := range tests {
		if got := s.TrustedURL(tt.host, tt.path); got != tt.want {
			t.Errorf("TrustedURL(%q, %q) = %v, want %v", tt.host, tt.path, got, tt.want)
		}
	}
	// A prefix trusts downloads from its host, not the host itself.
	if s.Trusted("github.com") {
		t.Error(`Trusted("github.com") = true with only URL prefixes of it`)
	}
	for _, bad := range []string{"github.com/a/../b", "github.com/a/./b", "github.com/a%2Fb", "github.com/a?b", "github.com/a#b",
		"203.0.113.9/x/y", "github.com:443/a", "*.*.github.com/a", "bad_host!/a", "https://github.com/a", `github.com/a\b`} {
		if _, err := ParseSources([]string{"ok.example", bad}); err == nil || !strings.HasPrefix(err.Error(), "[1] ") {
			t.Errorf("ParseSources(%q) = %v, want an error naming entry [1]", bad, err)
		}
	}
	// A CIDR is still a CIDR.
	c, err := ParseSources([]string{"10.0.0.0/8"})
	if err != nil || !c.Trusted("10.1.2.3") {
		t.Errorf("ParseSources(10.0.0.0/8) = %v, Trusted(10.1.2.3) = %v", err, c.Trusted("10.1.2.3"))
	}
}
