package policy

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Rule IDs of change control.
const (
	// RuleOutsideReleaseWindow: an image change outside every release
	// window, or inside a freeze, without a change ID that allows it.
	RuleOutsideReleaseWindow RuleID = "outside-release-window"
	// RuleEmergencyChange: an image change let through by an emergency
	// change ID, flagged for review.
	RuleEmergencyChange RuleID = "emergency-change"
)

// DefaultChangeIDAnnotation is changeControl.changeID.annotation when the
// policy leaves it out.
const DefaultChangeIDAnnotation = "buildguard.dev/change-id"

// ChangeControl says when image changes may roll out.
type ChangeControl struct {
	// Windows are when image changes may roll out without a change ID.
	// With none, only freezes restrict changes.
	Windows []Window `json:"windows,omitempty" yaml:"windows,omitempty"`
	// Freezes are periods without image changes unless an emergency change
	// ID is given.
	Freezes []Freeze `json:"freezes,omitempty" yaml:"freezes,omitempty"`
	// ChangeID says where a change ID is found and what it must look like.
	ChangeID ChangeID `json:"changeID,omitempty" yaml:"changeID,omitempty"`
}

// Window is a weekly release window in a time zone. When To is not after
// From the window crosses midnight: "22:00"–"02:00" on Fri runs from Friday
// 22:00 to Saturday 02:00.
type Window struct {
	Days     []string `json:"days" yaml:"days"` // Mon, Tue, … Sun
	From     string   `json:"from" yaml:"from"` // HH:MM
	To       string   `json:"to" yaml:"to"`     // HH:MM
	TimeZone string   `json:"timeZone,omitempty" yaml:"timeZone,omitempty"`
}

// Freeze is a period, in RFC 3339, without image changes.
type Freeze struct {
	From   string `json:"from" yaml:"from"`
	To     string `json:"to" yaml:"to"`
	Reason string `json:"reason,omitempty" yaml:"reason,omitempty"`
}

// ChangeID configures change IDs.
type ChangeID struct {
	// Annotation holds the change ID, on the object or its pod template.
	// The default is buildguard.dev/change-id.
	Annotation string `json:"annotation,omitempty" yaml:"annotation,omitempty"`
	// Pattern is what a change ID must match to allow a change outside
	// the windows. Without it, no change ID does.
	Pattern string `json:"pattern,omitempty" yaml:"pattern,omitempty"`
	// EmergencyPattern is what a change ID must match during a freeze.
	EmergencyPattern string `json:"emergencyPattern,omitempty" yaml:"emergencyPattern,omitempty"`
}

// ChangeFacts describe the admitted change, for change control.
type ChangeFacts struct {
	// ImageChange is true for a CREATE, or an UPDATE whose images differ
	// from the old object's, of an object no controller owns (what a
	// controller creates follows from a change already judged).
	ImageChange bool
	// Annotations are the object's annotations and its pod template's.
	Annotations map[string]string
}

type changeControl struct {
	windows    []window
	freezes    []freeze
	annotation string
	pattern    *regexp.Regexp
	emergency  *regexp.Regexp
}

type window struct {
	days     [7]bool
	from, to int // minutes after midnight
	loc      *time.Location
	src      Window
}

type freeze struct {
	from, to time.Time
	reason   string
}

var weekdays = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// compileChangeControl validates cc. Time zones come from the system's
// database or, where it has none, the one embedded in the binary.
func compileChangeControl(cc *ChangeControl) (*changeControl, error) {
	if cc == nil {
		return nil, nil
	}
	c := &changeControl{annotation: cc.ChangeID.Annotation}
	if c.annotation == "" {
		c.annotation = DefaultChangeIDAnnotation
	}
	for i, w := range cc.Windows {
		f := fmt.Sprintf("changeControl.windows[%d]", i)
		cw := window{src: w}
		if len(w.Days) == 0 {
			return nil, &FieldError{Field: f + ".days", Msg: "required: e.g. [Mon, Tue, Wed, Thu]"}
		}
		for j, d := range w.Days {
			wd, ok := weekdays[strings.ToLower(strings.TrimSpace(d))]
			if !ok {
				return nil, &FieldError{Field: fmt.Sprintf("%s.days[%d]", f, j), Msg: fmt.Sprintf("%q is not one of Mon, Tue, Wed, Thu, Fri, Sat, Sun", d)}
			}
			cw.days[wd] = true
		}
		var err error
		if cw.from, err = clockMinutes(w.From); err != nil {
			return nil, &FieldError{Field: f + ".from", Msg: err.Error()}
		}
		if cw.to, err = clockMinutes(w.To); err != nil {
			return nil, &FieldError{Field: f + ".to", Msg: err.Error()}
		}
		if cw.from == cw.to {
			return nil, &FieldError{Field: f + ".to", Msg: "equals from: the window would be empty"}
		}
		tz := w.TimeZone
		if tz == "" {
			tz = "UTC"
		}
		if cw.loc, err = time.LoadLocation(tz); err != nil {
			return nil, &FieldError{Field: f + ".timeZone", Msg: fmt.Sprintf("%q is not an IANA time zone (e.g. Europe/Berlin)", tz)}
		}
		c.windows = append(c.windows, cw)
	}
	for i, fr := range cc.Freezes {
		f := fmt.Sprintf("changeControl.freezes[%d]", i)
		from, err := time.Parse(time.RFC3339, fr.From)
		if err != nil {
			return nil, &FieldError{Field: f + ".from", Msg: fmt.Sprintf("%q is not RFC 3339", fr.From)}
		}
		to, err := time.Parse(time.RFC3339, fr.To)
		if err != nil {
			return nil, &FieldError{Field: f + ".to", Msg: fmt.Sprintf("%q is not RFC 3339", fr.To)}
		}
		if !to.After(from) {
			return nil, &FieldError{Field: f + ".to", Msg: "must be after from"}
		}
		c.freezes = append(c.freezes, freeze{from: from, to: to, reason: fr.Reason})
	}
	var err error
	if cc.ChangeID.Pattern != "" {
		if c.pattern, err = regexp.Compile(cc.ChangeID.Pattern); err != nil {
			return nil, &FieldError{Field: "changeControl.changeID.pattern", Msg: err.Error()}
		}
	}
	if cc.ChangeID.EmergencyPattern != "" {
		if c.emergency, err = regexp.Compile(cc.ChangeID.EmergencyPattern); err != nil {
			return nil, &FieldError{Field: "changeControl.changeID.emergencyPattern", Msg: err.Error()}
		}
	}
	return c, nil
}

// clockMinutes parses "HH:MM" (24-hour; "24:00" is the end of the day).
func clockMinutes(s string) (int, error) {
	var h, m int
	if len(s) != 5 || s[2] != ':' {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	if _, err := fmt.Sscanf(s, "%02d:%02d", &h, &m); err != nil || h > 24 || m > 59 || (h == 24 && m != 0) {
		return 0, fmt.Errorf("%q is not HH:MM", s)
	}
	return h*60 + m, nil
}

// open reports whether t falls in the window, in the window's zone.
func (w window) open(t time.Time) bool {
	l := t.In(w.loc)
	mins := l.Hour()*60 + l.Minute()
	if w.from < w.to {
		return w.days[l.Weekday()] && mins >= w.from && mins < w.to
	}
	// Crossing midnight: the evening of a listed day or the early
	// morning after one.
	return (w.days[l.Weekday()] && mins >= w.from) || (w.days[(l.Weekday()+6)%7] && mins < w.to)
}

func (w window) String() string {
	tz := w.src.TimeZone
	if tz == "" {
		tz = "UTC"
	}
	return fmt.Sprintf("%s %s–%s %s", strings.Join(w.src.Days, ","), w.src.From, w.src.To, tz)
}

// changeFinding judges an image change against change control: nil when
// it may roll out. emergency reports an emergency change ID that let it
// through.
func (p *Policy) changeFinding(f Facts) (out *Finding, emergency *Finding, changeID string) {
	cc := p.changes
	if cc == nil || !f.Change.ImageChange {
		return nil, nil, ""
	}
	id := strings.TrimSpace(f.Change.Annotations[cc.annotation])
	ev := map[string]any{"time": f.Now.UTC().Format(time.RFC3339)}
	if id != "" {
		ev["changeID"] = id
	}
	for _, fr := range cc.freezes {
		if f.Now.Before(fr.from) || !f.Now.Before(fr.to) {
			continue
		}
		ev["freeze"] = map[string]any{"from": fr.from.Format(time.RFC3339), "to": fr.to.Format(time.RFC3339), "reason": fr.reason}
		if id != "" && cc.emergency != nil && cc.emergency.MatchString(id) {
			e := p.finding(RuleEmergencyChange, SeverityMedium,
				fmt.Sprintf("image change during freeze %q let through by emergency change ID %s; review it", fr.reason, id), ev)
			e.Summary = "emergency change " + id + " during a freeze"
			return nil, &e, id
		}
		want := "no change ID can allow it"
		if cc.emergency != nil {
			want = fmt.Sprintf("an emergency change ID matching %s in annotation %s", cc.emergency, cc.annotation)
		}
		ev["wanted"] = want
		msg := fmt.Sprintf("image change during freeze %q (%s to %s)", fr.reason, ev["freeze"].(map[string]any)["from"], ev["freeze"].(map[string]any)["to"])
		if id != "" {
			msg += fmt.Sprintf(" with change ID %s", id)
		}
		fd := p.finding(RuleOutsideReleaseWindow, SeverityHigh, msg+"; needs "+want, ev)
		fd.Summary = fmt.Sprintf("during freeze %q", fr.reason)
		return &fd, nil, ""
	}
	if len(cc.windows) == 0 {
		return nil, nil, id
	}
	var local []string
	for _, w := range cc.windows {
		if w.open(f.Now) {
			return nil, nil, id
		}
		local = append(local, fmt.Sprintf("%s (now %s)", w, f.Now.In(w.loc).Format("Mon 15:04 MST")))
	}
	if id != "" && cc.pattern != nil && cc.pattern.MatchString(id) {
		if cc.emergency != nil && cc.emergency.MatchString(id) {
			e := p.finding(RuleEmergencyChange, SeverityMedium,
				fmt.Sprintf("image change outside release windows let through by emergency change ID %s; review it", id), ev)
			e.Summary = "emergency change " + id + " outside release windows"
			return nil, &e, id
		}
		return nil, nil, id
	}
	want := "no change ID can allow it (changeControl.changeID.pattern is not set)"
	if cc.pattern != nil {
		want = fmt.Sprintf("a change ID matching %s in annotation %s", cc.pattern, cc.annotation)
	}
	ev["windows"] = local
	ev["wanted"] = want
	msg := "image change outside every release window: " + strings.Join(local, "; ")
	if id != "" {
		msg += fmt.Sprintf("; change ID %s does not match", id)
	}
	fd := p.finding(RuleOutsideReleaseWindow, SeverityMedium, msg+"; needs "+want, ev)
	fd.Summary = "outside release windows, no valid change ID"
	return &fd, nil, ""
}

// applyChangeControl adds change-control findings to v. An image created
// minutes ago and rolled out outside a window is one chain: its
// fresh-image finding and the window finding become one finding of
// critical severity.
func (p *Policy) applyChangeControl(f Facts, v *Verdict) {
	fd, emergency, id := p.changeFinding(f)
	v.ChangeID = id
	if emergency != nil {
		v.Findings = append(v.Findings, *emergency)
	}
	if fd == nil {
		return
	}
	chained := false
	for i := range v.Images {
		iv := &v.Images[i]
		if iv.Exception != nil {
			continue
		}
		for j, ff := range iv.Findings {
			if ff.Rule != RuleFreshImage || ff.Action == ActionIgnore {
				continue
			}
			c := *fd
			c.Severity = SeverityCritical
			c.Message = ff.Message + ", and rolled out " + strings.TrimPrefix(fd.Message, "image change ")
			c.Summary = ff.Summary + "; " + fd.Summary
			ev := map[string]any{"chain": []string{string(RuleFreshImage), string(RuleOutsideReleaseWindow)}}
			for k, x := range ff.Evidence {
				ev[k] = x
			}
			for k, x := range fd.Evidence {
				ev[k] = x
			}
			c.Evidence = ev
			if ff.Action.rank() > c.Action.rank() {
				c.Action = ff.Action
			}
			iv.Findings[j] = c
			if o := outcomeOf(c.Action); o.rank() > iv.Outcome.rank() {
				iv.Outcome = o
			}
			chained = true
		}
		if iv.Outcome.rank() > v.Outcome.rank() {
			v.Outcome = iv.Outcome
		}
	}
	if !chained {
		v.Findings = append(v.Findings, *fd)
	}
}
