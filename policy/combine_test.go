package policy

import (
	"testing"
	"time"
)

func TestCombine(t *testing.T) {
	fresh := pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(now.Add(-5 * time.Second))})
	spec := func(name string, m Mode, fresh Action) *Policy {
		p, err := CompileNamed(name, Spec{Mode: m, Registries: Registries{Allow: []string{"ghcr.io/acme/*"}}, Rules: map[RuleID]Action{RuleFreshImage: fresh}})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name        string
		policies    []*Policy
		wantAllowed bool
		wantOutcome Outcome
		wantMode    Mode
	}{
		{"audit and enforce: enforce denies", []*Policy{spec("a", ModeAudit, ActionDeny), spec("e", ModeEnforce, ActionDeny)}, false, OutcomeDeny, ModeEnforce},
		{"enforce warns, audit would deny", []*Policy{spec("e", ModeEnforce, ActionWarn), spec("a", ModeAudit, ActionDeny)}, true, OutcomeDeny, ModeAudit},
		{"both ignore", []*Policy{spec("x", ModeEnforce, ActionIgnore), spec("y", ModeWarn, ActionIgnore)}, true, OutcomeAllow, ModeEnforce},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var vs []Verdict
			for _, p := range tt.policies {
				vs = append(vs, Decide(p, fresh))
			}
			v := Combine(vs)
			if v.Allowed != tt.wantAllowed || v.Outcome != tt.wantOutcome || v.Mode != tt.wantMode {
				t.Errorf("Combine = allowed %v outcome %s mode %s, want %v %s %s", v.Allowed, v.Outcome, v.Mode, tt.wantAllowed, tt.wantOutcome, tt.wantMode)
			}
			if fs := v.Images[0].Findings; len(fs) != 1 {
				t.Errorf("findings = %+v, want the fresh-image finding once", fs)
			}
		})
	}
}
