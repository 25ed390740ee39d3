package decision_test

import (
	"context"
	"slices"
	"testing"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/policy"
)

func TestWord(t *testing.T) {
	deny := policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeDeny}
	wouldDeny := policy.Verdict{Mode: policy.ModeAudit, Outcome: policy.OutcomeDeny, Allowed: true}
	warn := policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeWarn, Allowed: true}
	for _, tc := range []struct {
		source decision.Source
		v      policy.Verdict
		want   string
	}{
		{decision.Admission, deny, "deny"},
		{decision.Admission, wouldDeny, "would-deny"},
		{decision.Admission, warn, "warn"},
		{decision.Scan, deny, "would-deny"},
		{decision.Scan, warn, "warn"},
		{decision.LateEvidence, deny, "would-deny"},
		{decision.LateEvidence, wouldDeny, "would-deny"},
	} {
		d := decision.Decision{Source: tc.source, Verdict: tc.v}
		if got := d.Word(); got != tc.want {
			t.Errorf("Decision{Source: %s, Verdict: %s/%v}.Word() = %q, want %q", tc.source, tc.v.Outcome, tc.v.Allowed, got, tc.want)
		}
	}
}

func TestObservers(t *testing.T) {
	var got []string
	note := func(name string) decision.Observer {
		return decision.ObserverFunc(func(_ context.Context, d decision.Decision) { got = append(got, name+":"+d.ID) })
	}
	obs := decision.Observers{note("a"), note("b")}
	obs.Decided(t.Context(), decision.Decision{ID: "u1"})
	if want := []string{"a:u1", "b:u1"}; !slices.Equal(got, want) {
		t.Errorf("Observers.Decided told %v, want %v", got, want)
	}
}
