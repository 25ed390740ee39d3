package records

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/policy"
)

// EventSink posts a Warning Event about a workload. *cluster.Events is one.
type EventSink interface {
	Event(w engine.Workload, reason, message string)
}

// Event reasons.
const (
	ReasonDenied    = "BuildguardDenied"
	ReasonWouldDeny = "BuildguardWouldDeny"
)

// Defaults of a Notifier.
const (
	DefaultEventWindow = 10 * time.Minute
	DefaultEventKeys   = 10000
)

// maxEventMessage keeps an Event's message short; the API server allows
// 1 KiB and kubectl shows one line.
const maxEventMessage = 300

// maxEventLink is the longest review link an Event's message ends with:
// the rest of the message says what happened.
const maxEventLink = maxEventMessage / 2

// Notifier posts a Warning Event for every deny and would-deny: on the
// workload, or, for a denied CREATE (the object does not exist) or an
// object without a name yet (generateName), on its namespace. The Event
// names the rules and gives a short reason.
//
// The same workload denied for the same rules again within Window posts
// nothing more. This is on top of client-go's event correlator, which
// folds identical Events into a count but still patches the API server
// for each repeat (up to 25 per object, then one every 5 minutes): a
// controller retrying a denied Pod every second would cost a request
// each time without it.
type Notifier struct {
	// Sink posts the Events. Required.
	Sink EventSink
	// Window is how long a posted Event silences its repeats. The default
	// is DefaultEventWindow.
	Window time.Duration
	// MaxKeys bounds the remembered Events; when full, the oldest are
	// forgotten first. The default is DefaultEventKeys.
	MaxKeys int
	// Clock tells the time that starts and ends Windows. The default,
	// nil, is the real clock.
	Clock clock.Clock
	// Review, when set, ends each Event's message with a link to the
	// decision's page in the review UI (its record's, Decision.ID); a
	// link longer than half a message is left out. The default links
	// nothing.
	Review ReviewURL

	mu   sync.Mutex
	seen map[string]time.Time
}

// Decided posts the Event for a decision, if it needs one; it implements
// decision.Observer and does not block (the sink queues).
func (n *Notifier) Decided(_ context.Context, d decision.Decision) {
	v, w := d.Verdict, d.Workload
	if v.Outcome != policy.OutcomeDeny {
		return
	}
	rules := denyRules(v)
	key := w.Namespace + "/" + w.Kind + "/" + w.Name + "/" + strings.Join(rules, ",")
	if !n.first(key) {
		return
	}
	reason := ReasonWouldDeny
	verb := fmt.Sprintf("would deny (%s mode)", v.Mode)
	if !v.Allowed {
		reason, verb = ReasonDenied, "denied"
	}
	name := w.Name
	if name == "" {
		name = "(generated name)"
	}
	msg := fmt.Sprintf("buildguard %s %s %s: [%s] %s", verb, w.Kind, name, strings.Join(rules, ","), firstSummary(v))
	target := w
	if (!v.Allowed && (d.Operation == "CREATE" || d.Operation == "")) || w.Name == "" {
		// The object does not exist: put the Event in its namespace, on
		// the Namespace, where "kubectl get events -n NS" shows it.
		target = engine.Workload{Kind: "Namespace", Namespace: w.Namespace, Name: w.Namespace}
	}
	// The link is whole or absent: the text before it is shortened.
	if link := n.Review.Decision(d.ID); link != "" && len(link) <= maxEventLink {
		n.Sink.Event(target, reason, shorten.Text(msg, maxEventMessage-len(" "+link))+" "+link)
		return
	}
	n.Sink.Event(target, reason, shorten.Text(msg, maxEventMessage))
}

// first reports whether key was not seen within the window, and notes it.
func (n *Notifier) first(key string) bool {
	now := clock.OrReal(n.Clock).Now()
	window := n.Window
	if window <= 0 {
		window = DefaultEventWindow
	}
	max := n.MaxKeys
	if max <= 0 {
		max = DefaultEventKeys
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if t, ok := n.seen[key]; ok && now.Sub(t) < window {
		return false
	}
	if n.seen == nil {
		n.seen = map[string]time.Time{}
	}
	if len(n.seen) >= max {
		for k, t := range n.seen {
			if now.Sub(t) >= window {
				delete(n.seen, k)
			}
		}
		// Still full of live keys: forget an arbitrary half rather than
		// grow; the correlator still limits what those repeat.
		for k := range n.seen {
			if len(n.seen) < max/2 {
				break
			}
			delete(n.seen, k)
		}
	}
	n.seen[key] = now
	return true
}

// denyRules are the rules of the denying findings; all rules when none
// is (cannot happen for a deny, but keeps the Event useful).
func denyRules(v policy.Verdict) []string {
	if rules := v.RuleIDs(policy.ActionDeny); len(rules) > 0 {
		return rules
	}
	return v.RuleIDs(policy.ActionWarn)
}

// firstSummary is the summary of the first denying finding, naming its
// container.
func firstSummary(v policy.Verdict) string {
	for _, iv := range v.Images {
		for _, f := range iv.Findings {
			if f.Action == policy.ActionDeny {
				return fmt.Sprintf("%s: %s", iv.Container, f.Summary)
			}
		}
	}
	for _, f := range v.Findings {
		if f.Action == policy.ActionDeny {
			return f.Summary
		}
	}
	return ""
}
