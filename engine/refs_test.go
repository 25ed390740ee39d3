package engine

import (
	"fmt"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

func TestRefCache(t *testing.T) {
	var c refCache
	for _, tc := range []struct {
		image    string
		insecure bool
		scheme   string
		wantErr  bool
	}{
		{"registry.example/app:v1", false, "https", false},
		{"registry.example/app:v1", true, "http", false},
		{"127.0.0.1:5000/app@sha256:" + fmt.Sprintf("%064x", 1), true, "http", false},
		{"Not A Reference", false, "", true},
	} {
		for range 2 { // parsed, then cached
			got, err := c.parse(tc.image, tc.insecure)
			if tc.wantErr {
				if err == nil {
					t.Errorf("parse(%q, %v) = %v, want an error", tc.image, tc.insecure, got)
				}
				continue
			}
			opts := []name.Option{}
			if tc.insecure {
				opts = append(opts, name.Insecure)
			}
			want, _ := name.ParseReference(tc.image, opts...)
			if err != nil || got.String() != want.String() || got.Context().Scheme() != tc.scheme {
				t.Errorf("parse(%q, %v) = %v (scheme %s), %v; want %v (scheme %s)", tc.image, tc.insecure, got, got.Context().Scheme(), err, want, tc.scheme)
			}
		}
	}
	for i := range maxParsedRefs + 10 {
		if _, err := c.parse(fmt.Sprintf("registry.example/app:v%d", i), false); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(c.m); n > maxParsedRefs {
		t.Errorf("refCache holds %d references, want at most %d", n, maxParsedRefs)
	}
}
