package review

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/records"
)

func TestTimeline(t *testing.T) {
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }
	d := evidence.Decision{ID: "x", Time: t0, Operation: "CREATE", Namespace: "shop", Kind: "Pod", Name: "p", User: "dev", Mode: "audit", Verdict: records.VerdictWouldDeny,
		Rules: []string{"unsigned"}, Exceptions: []string{"shop/old"}}
	images := []records.ImageRecord{
		{Image: "r.example/a:1", Findings: []records.FindingRecord{
			{Rule: "unsigned", Message: "no signature found for sha256:1"},
			{Rule: "missing-provenance", Message: "no verified SLSA provenance for sha256:1"},
			{Rule: "fresh-image", Message: "created 1m before admission", Evidence: map[string]json.RawMessage{
				"created": raw(`"2026-12-01T11:59:00Z"`), "timeSource": raw(`"attestation"`), "platform": raw(`"linux/arm64"`)}},
			// The same created time twice (two rules about one platform) is one event.
			{Rule: "fresh-image", Message: "again", Evidence: map[string]json.RawMessage{"created": raw(`"2026-12-01T11:59:00Z"`)}},
			// A build without a finish time, reported twice.
			{Rule: "host-built", Message: "built on laptop", Evidence: map[string]json.RawMessage{
				"node": raw(`"laptop"`), "started": raw(`"2026-12-01T11:00:00Z"`), "finished": raw(`"0001-01-01T00:00:00Z"`)}},
			{Rule: "untrusted-egress", Message: "egress", Evidence: map[string]json.RawMessage{
				"build":       raw(`{"node":"laptop","started":"2026-12-01T11:00:00Z","finished":"0001-01-01T00:00:00Z"}`),
				"connections": raw(`[{"time":"2026-12-01T11:00:05Z","node":"laptop","destIP":"198.51.100.7","destPort":443,"destName":"evil.example","process":"curl","pid":7}]`)}},
			// Evidence of an unexpected shape is skipped, not a panic.
			{Rule: "untrusted-egress", Message: "odd", Evidence: map[string]json.RawMessage{"build": raw(`"nope"`), "connections": raw(`{}`)}},
		}},
		{Scope: records.ScopeWorkload, Findings: []records.FindingRecord{{Rule: "invalid-mode-label", Message: "m"}}},
	}
	var got []string
	for _, e := range Timeline(d, images) {
		when := "-"
		if !e.Time.IsZero() {
			when = e.Time.Format(time.TimeOnly)
		}
		got = append(got, when+" "+e.Kind+" "+e.Title+" | "+strings.Join(e.Detail, "; "))
	}
	want := []string{
		"11:00:00 built Built on node laptop | [host-built] built on laptop",
		"11:00:05 connected curl (pid 7) on laptop connected to evil.example (198.51.100.7:443) | [untrusted-egress] the destination is not trusted",
		"11:59:00 created Image created | platform linux/arm64; time from the build finish of verified SLSA provenance; [fresh-image] created 1m before admission; [fresh-image] again",
		"- signatures Not signed as required | [unsigned] no signature found for sha256:1",
		"- provenance Provenance not as required | [missing-provenance] no verified SLSA provenance for sha256:1",
		"12:00:00 would-deny Admitted; would be denied (audit mode) | create of Pod shop/p by dev (audit mode); rules: unsigned; exceptions used: shop/old",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Timeline =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestDetailUnreadableImages(t *testing.T) {
	f := newFixture(t)
	if err := f.store.AddDecision(t.Context(), evidence.Decision{ID: "odd", Time: t0, Namespace: "shop", Verdict: "deny", Images: json.RawMessage(`{"not":"a list"}`)}); err != nil {
		t.Fatal(err)
	}
	c, _ := f.login("alice-token")
	w := f.do("GET", "/decisions/odd", nil, c)
	if got := text(w.Body.String()); w.Code != http.StatusOK || !strings.Contains(got, "The recorded images could not be read: json: cannot unmarshal object") || !strings.Contains(got, `"not": "a list"`) {
		t.Errorf("GET /decisions/odd = %d\n%s", w.Code, got)
	}
}
