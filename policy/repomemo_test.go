package policy

import (
	"fmt"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// TestRegistryAllowedMemo: remembered answers are the answers, asked
// again, and the memo stays bounded.
func TestRegistryAllowedMemo(t *testing.T) {
	p, err := Parse([]byte("apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nregistries:\n  allow: [\"ghcr.io/acme/*\", \"169.254.169.254/**\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		repo string
		want bool
	}{
		{"ghcr.io/acme/shop", true},
		{"ghcr.io/acme/team/shop", false},
		{"ghcr.io/other/shop", false},
		{"169.254.169.254/x/y", false}, // forbidden whatever the globs say
	} {
		repo, err := name.NewRepository(tc.repo)
		if err != nil {
			t.Fatal(err)
		}
		for i := range 2 {
			if got := p.RegistryAllowed(repo); got != tc.want {
				t.Errorf("RegistryAllowed(%s) #%d = %v, want %v", tc.repo, i+1, got, tc.want)
			}
		}
	}
	for i := range maxMemoRepos + 10 {
		repo, err := name.NewRepository(fmt.Sprintf("ghcr.io/acme/app%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if !p.RegistryAllowed(repo) {
			t.Fatalf("RegistryAllowed(%s) = false, want true", repo)
		}
	}
	if n := len(p.allowed.m); n > maxMemoRepos {
		t.Errorf("the memo holds %d repositories, want at most %d", n, maxMemoRepos)
	}
}

func TestInsecureMemo(t *testing.T) {
	p, err := Parse([]byte("apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nregistries:\n  allow: [\"**\"]\n  insecure: [\"127.0.0.1:*\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		registry string
		want     bool
	}{{"127.0.0.1:5000", true}, {"127.0.0.1", false}, {"ghcr.io", false}} {
		for i := range 2 {
			if got := p.Insecure(tc.registry); got != tc.want {
				t.Errorf("Insecure(%s) #%d = %v, want %v", tc.registry, i+1, got, tc.want)
			}
		}
	}
}
