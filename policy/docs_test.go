package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDocsListEveryRule: the README's table of rules and docs/policy.md
// name every rule a finding can carry, so that a user who meets a rule ID in
// a denial finds what it means.
func TestDocsListEveryRule(t *testing.T) {
	rules := append(Rules(), RuleImplausibleBuildTime)
	for _, doc := range []string{"README.md", filepath.Join("docs", "policy.md")} {
		b, err := os.ReadFile(filepath.Join("..", doc))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			if !strings.Contains(string(b), "| `"+string(r)+"` |") {
				t.Errorf("%s: no table row for rule %s", doc, r)
			}
		}
	}
}
