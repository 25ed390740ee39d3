package policy

import (
	"strings"
	"testing"
	"time"
)

func mustTime(t *testing.T, s string) time.Time {
	t.Helper()
	tt, err := time.Parse(time.RFC3339, s)
	if err != nil {
		t.Fatal(err)
	}
	return tt
}

func TestChangeControl(t *testing.T) {
	cc := &ChangeControl{
		Windows: []Window{
			{Days: []string{"Mon", "Tue", "Wed", "Thu"}, From: "09:00", To: "17:00", TimeZone: "Europe/Berlin"},
			{Days: []string{"Fri"}, From: "22:00", To: "02:00", TimeZone: "America/New_York"}, // crosses midnight
		},
		Freezes:  []Freeze{{From: "2026-12-22T00:00:00Z", To: "2027-01-04T00:00:00Z", Reason: "year-end freeze"}},
		ChangeID: ChangeID{Pattern: "^(CHG|EMERG)-[0-9]+$", EmergencyPattern: "^EMERG-[0-9]+$"},
	}
	p := mustCompile(t, Spec{Registries: Registries{Allow: []string{"ghcr.io/**"}}, ChangeControl: cc})
	old := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		at        string
		change    bool
		changeID  string
		wantRules string
		wantID    string
		allowed   bool
	}{
		{"inside Berlin window", "2026-11-26T10:00:00+01:00", true, "", "", "", true},
		{"Berlin window edge: 17:00 is closed", "2026-11-26T17:00:00+01:00", true, "", "outside-release-window", "", false},
		{"Thursday evening", "2026-11-26T19:30:00Z", true, "", "outside-release-window", "", false},
		{"Friday: not a Berlin window day", "2026-11-27T10:00:00+01:00", true, "", "outside-release-window", "", false},
		{"New York Friday 23:30", "2026-11-27T23:30:00-05:00", true, "", "", "", true},
		{"New York Saturday 01:30, after midnight", "2026-11-28T01:30:00-05:00", true, "", "", "", true},
		{"New York Saturday 02:00 closes", "2026-11-28T02:00:00-05:00", true, "", "outside-release-window", "", false},
		{"New York Sunday 01:00 is not after a Friday", "2026-11-29T01:00:00-05:00", true, "", "outside-release-window", "", false},
		// 2026-03-29 is the last Sunday of March: Berlin jumps from 02:00
		// CET to 03:00 CEST. Monday 09:00 CEST is 07:00 UTC, not 08:00.
		{"DST: Monday 07:30 UTC is 09:30 CEST, open", "2026-03-30T07:30:00Z", true, "", "", "", true},
		{"DST: Monday 06:30 UTC is 08:30 CEST, closed", "2026-03-30T06:30:00Z", true, "", "outside-release-window", "", false},
		{"DST: the week before, 07:30 UTC is 08:30 CET, closed", "2026-03-23T07:30:00Z", true, "", "outside-release-window", "", false},
		{"outside with a change ID", "2026-11-28T12:00:00Z", true, "CHG-1234", "", "CHG-1234", true},
		{"outside with a bad change ID", "2026-11-28T12:00:00Z", true, "TICKET-9", "outside-release-window", "", false},
		{"outside with an emergency ID is flagged", "2026-11-28T12:00:00Z", true, "EMERG-7", "emergency-change", "EMERG-7", true},
		{"scaling outside a window is no change", "2026-11-28T12:00:00Z", false, "", "", "", true},
		{"freeze inside a window", "2026-12-22T10:00:00+01:00", true, "", "outside-release-window", "", false},
		{"freeze with a normal change ID", "2026-12-23T10:00:00+01:00", true, "CHG-1", "outside-release-window", "", false},
		{"freeze with an emergency ID", "2026-12-23T10:00:00+01:00", true, "EMERG-2", "emergency-change", "EMERG-2", true},
		{"freeze ended", "2027-01-04T10:00:00+01:00", true, "", "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(old)})
			f.Now = mustTime(t, tt.at)
			f.Change = ChangeFacts{ImageChange: tt.change, Annotations: map[string]string{}}
			if tt.changeID != "" {
				f.Change.Annotations[DefaultChangeIDAnnotation] = tt.changeID
			}
			v := Decide(p, f)
			if got := strings.Join(rules(v), " "); strings.TrimSuffix(strings.Replace(got, "/deny", "", -1), "/warn") != tt.wantRules {
				t.Errorf("Decide at %s = findings %q, want %q", tt.at, got, tt.wantRules)
			}
			if v.Allowed != tt.allowed || v.ChangeID != tt.wantID {
				t.Errorf("Decide at %s = allowed %v changeID %q, want %v %q", tt.at, v.Allowed, v.ChangeID, tt.allowed, tt.wantID)
			}
		})
	}
}

func TestChangeControlMessage(t *testing.T) {
	p := mustCompile(t, Spec{Registries: Registries{Allow: []string{"ghcr.io/**"}}, ChangeControl: &ChangeControl{
		Windows:  []Window{{Days: []string{"Mon", "Tue"}, From: "09:00", To: "17:00", TimeZone: "Europe/Berlin"}},
		ChangeID: ChangeID{Pattern: "^CHG-[0-9]+$"},
	}})
	f := pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(now.Add(-30 * 24 * time.Hour))})
	f.Now = mustTime(t, "2026-11-28T02:12:00Z")
	f.Change.ImageChange = true
	v := Decide(p, f)
	if len(v.Findings) != 1 {
		t.Fatalf("findings = %+v, want one", v.Findings)
	}
	msg := v.Findings[0].Message
	for _, want := range []string{"Mon,Tue 09:00–17:00 Europe/Berlin", "now Sat 03:12 CET", "a change ID matching ^CHG-[0-9]+$ in annotation buildguard.dev/change-id"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not say %q", msg, want)
		}
	}
}

// TestChangeControlChain: an image created minutes ago and rolled out
// outside a window is one finding of critical severity.
func TestChangeControlChain(t *testing.T) {
	p := mustCompile(t, Spec{Registries: Registries{Allow: []string{"ghcr.io/**"}}, ChangeControl: &ChangeControl{
		Windows: []Window{{Days: []string{"Mon"}, From: "09:00", To: "17:00"}},
	}})
	at := mustTime(t, "2026-11-28T02:12:00Z")
	f := pod(Container{Image: "ghcr.io/acme/shop:1", Resolved: image(at.Add(-90 * time.Second))})
	f.Now = at
	f.Change.ImageChange = true
	v := Decide(p, f)
	if len(v.Findings) != 0 || len(v.Images[0].Findings) != 1 {
		t.Fatalf("findings = %+v / %+v, want one chained image finding", v.Findings, v.Images[0].Findings)
	}
	fd := v.Images[0].Findings[0]
	if fd.Severity != SeverityCritical || fd.Rule != RuleOutsideReleaseWindow || !strings.Contains(fd.Message, "1m30s before admission") ||
		!strings.Contains(fd.Message, "rolled out outside every release window") {
		t.Errorf("chained finding = %+v", fd)
	}
	if chain, _ := fd.Evidence["chain"].([]string); strings.Join(chain, ",") != "fresh-image,outside-release-window" {
		t.Errorf("chain = %v", fd.Evidence["chain"])
	}
}

func TestChangeControlConfigErrors(t *testing.T) {
	tests := []struct {
		cc   ChangeControl
		want string
	}{
		{ChangeControl{Windows: []Window{{From: "09:00", To: "17:00"}}}, "changeControl.windows[0].days: required"},
		{ChangeControl{Windows: []Window{{Days: []string{"Monday"}, From: "09:00", To: "17:00"}}}, `changeControl.windows[0].days[0]: "Monday"`},
		{ChangeControl{Windows: []Window{{Days: []string{"Mon"}, From: "9:00", To: "17:00"}}}, "changeControl.windows[0].from"},
		{ChangeControl{Windows: []Window{{Days: []string{"Mon"}, From: "09:00", To: "25:00"}}}, "changeControl.windows[0].to"},
		{ChangeControl{Windows: []Window{{Days: []string{"Mon"}, From: "09:00", To: "09:00"}}}, "changeControl.windows[0].to: equals from"},
		{ChangeControl{Windows: []Window{{Days: []string{"Mon"}, From: "09:00", To: "17:00", TimeZone: "Mars/Olympus"}}}, "changeControl.windows[0].timeZone"},
		{ChangeControl{Freezes: []Freeze{{From: "2026-12-22", To: "2027-01-04T00:00:00Z"}}}, "changeControl.freezes[0].from"},
		{ChangeControl{Freezes: []Freeze{{From: "2027-01-04T00:00:00Z", To: "2026-12-22T00:00:00Z"}}}, "changeControl.freezes[0].to: must be after from"},
		{ChangeControl{ChangeID: ChangeID{Pattern: "^(CHG"}}, "changeControl.changeID.pattern"},
		{ChangeControl{ChangeID: ChangeID{EmergencyPattern: "[z-a]"}}, "changeControl.changeID.emergencyPattern"},
	}
	for _, tt := range tests {
		cc := tt.cc
		_, err := Compile(Spec{ChangeControl: &cc})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Compile(%+v) = %v, want an error naming %q", tt.cc, err, tt.want)
		}
	}
}
