package shorten

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestText(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"", 10, ""},
		{"short", 10, "short"},
		{"  a\n\tb  c ", 10, "a b c"},
		{"0123456789", 10, "0123456789"},
		{"0123456789a", 10, "0123456…"},
		{"ééééé", 8, "éé…"}, // 10 bytes; the cut backs off to a rune boundary
		{"abc", 3, "abc"},
		{"abcd", 3, "…"},
		{"abcd", 2, ""},
		{"abcd", -1, ""},
	} {
		got := Text(tc.s, tc.n)
		if got != tc.want {
			t.Errorf("Text(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
		if !utf8.ValidString(got) || strings.ContainsAny(got, "\n\t") {
			t.Errorf("Text(%q, %d) = %q: not valid UTF-8 on one line", tc.s, tc.n, got)
		}
	}
}
