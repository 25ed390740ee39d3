// Package shorten prepares untrusted text for quoting in messages of
// bounded size: error messages, admission warnings, Events.
package shorten

import (
	"strings"
	"unicode/utf8"
)

// Text folds white space in s and cuts it to at most n bytes on a rune
// boundary, marking the cut with "…". When n leaves no room for the mark
// (n < 3), a text longer than n is "".
func Text(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	if n < len("…") {
		return ""
	}
	cut := n - len("…")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
