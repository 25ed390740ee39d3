package records

import (
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"buildguard.dev/buildguard/cluster"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/policy"
)

type postedEvent struct {
	w               engine.Workload
	reason, message string
}

type fakeSink struct {
	mu     sync.Mutex
	events []postedEvent
}

func (s *fakeSink) Event(w engine.Workload, reason, message string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, postedEvent{w, reason, message})
}

func TestNotifier(t *testing.T) {
	clk := clocktest.New(t0)
	sink := &fakeSink{}
	n := &Notifier{Sink: sink, Clock: clk}
	allow := policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeAllow, Allowed: true}
	warn := policy.Verdict{Mode: policy.ModeEnforce, Outcome: policy.OutcomeWarn, Allowed: true}
	deploy := engine.Workload{Namespace: "shop", Kind: "Deployment", Name: "web", Operation: "UPDATE"}

	n.Decided(t.Context(), decided("u0", "CREATE", workload(), allow))
	n.Decided(t.Context(), decided("u0", "CREATE", workload(), warn))
	n.Decided(t.Context(), decided("u1", "CREATE", workload(), denyVerdict(policy.ModeEnforce)))
	for range 50 { // a controller retrying
		n.Decided(t.Context(), decided("u1", "CREATE", workload(), denyVerdict(policy.ModeEnforce)))
	}
	n.Decided(t.Context(), decided("u2", "UPDATE", deploy, denyVerdict(policy.ModeAudit)))
	clk.Advance(DefaultEventWindow)
	n.Decided(t.Context(), decided("u3", "CREATE", workload(), denyVerdict(policy.ModeEnforce)))

	want := []struct {
		kind, ns, name, reason, msg string
	}{
		{"Namespace", "shop", "shop", ReasonDenied, "buildguard denied Pod hotfix: [fresh-image] hotfix: created 14s before admission, minAge 10m"},
		{"Deployment", "shop", "web", ReasonWouldDeny, "buildguard would deny (audit mode) Deployment web: [fresh-image]"},
		{"Namespace", "shop", "shop", ReasonDenied, "buildguard denied Pod hotfix"},
	}
	if len(sink.events) != len(want) {
		t.Fatalf("posted %d events, want %d: %+v", len(sink.events), len(want), sink.events)
	}
	for i, w := range want {
		e := sink.events[i]
		if e.w.Kind != w.kind || e.w.Namespace != w.ns || e.w.Name != w.name || e.reason != w.reason || !strings.HasPrefix(e.message, w.msg) {
			t.Errorf("event %d = %s %s/%s %s %q, want %s %s/%s %s %q…", i, e.w.Kind, e.w.Namespace, e.w.Name, e.reason, e.message,
				w.kind, w.ns, w.name, w.reason, w.msg)
		}
	}
}

func TestNotifierBounded(t *testing.T) {
	sink := &fakeSink{}
	n := &Notifier{Sink: sink, MaxKeys: 10}
	for i := range 100 {
		w := workload()
		w.Name = strings.Repeat("x", i+1)
		n.Decided(t.Context(), decided("u", "UPDATE", w, denyVerdict(policy.ModeAudit)))
	}
	if len(n.seen) > 10 {
		t.Errorf("remembers %d events, want at most 10", len(n.seen))
	}
	if len(sink.events) != 100 {
		t.Errorf("posted %d events for 100 workloads, want 100", len(sink.events))
	}
}

// TestBroadcasterDedup checks what cluster.Events does with repeats
// without the Notifier: client-go's correlator turns identical events
// into a count, but every repeat is a request until its spam filter
// (25 per object, then one per 5 minutes) stops them.
func TestBroadcasterDedup(t *testing.T) {
	client := fake.NewClientset()
	ev := cluster.NewEvents(client)
	ns := engine.Workload{Kind: "Namespace", Namespace: "shop", Name: "shop"}
	for range 100 {
		ev.Event(ns, ReasonDenied, "buildguard denied Pod hotfix: [fresh-image]")
	}
	requests := func() int {
		n := 0
		for _, a := range client.Actions() {
			if a.GetResource().Resource == "events" {
				n++
			}
		}
		return n
	}
	waitFor(t, "events posted", func() bool { return requests() >= 25 })
	time.Sleep(200 * time.Millisecond)
	ev.Shutdown()
	t.Logf("%d event requests for 100 identical events", requests())
	if got := requests(); got > 26 {
		t.Errorf("%d event requests for 100 identical events, want the spam filter to stop them at 25", got)
	}
	list, err := client.CoreV1().Events("shop").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 1 || list.Items[0].Count < 2 || list.Items[0].Type != corev1.EventTypeWarning {
		t.Errorf("events in shop = %+v, want one Warning with a count", list.Items)
	}
}

// TestNotifierReviewLink: with a review URL, every Event's message ends
// with the decision's link, whole; the text before it is shortened to
// fit, and without a URL nothing is linked.
func TestNotifierReviewLink(t *testing.T) {
	base, err := ParseReviewURL("https://review.example/buildguard/")
	if err != nil {
		t.Fatal(err)
	}
	long := denyVerdict(policy.ModeEnforce)
	long.Images[0].Findings[0].Summary = strings.Repeat("a long reason ", 40)
	for _, tc := range []struct {
		name     string
		review   ReviewURL
		uid      string
		v        policy.Verdict
		want     string // the text before the link, or its start when shortened
		wantLink string
	}{
		{name: "linked", review: base, uid: "0d1e5a7c-1111-4a4a-9b9b-000000000001", v: denyVerdict(policy.ModeEnforce),
			want:     "buildguard denied Pod hotfix: [fresh-image] hotfix: created 14s before admission, minAge 10m",
			wantLink: "https://review.example/buildguard/decisions/0d1e5a7c-1111-4a4a-9b9b-000000000001"},
		{name: "shortened, the link whole", review: base, uid: "0d1e5a7c-1111-4a4a-9b9b-000000000002", v: long,
			want:     "buildguard denied Pod hotfix: [fresh-image] hotfix: a long reason a long reason",
			wantLink: "https://review.example/buildguard/decisions/0d1e5a7c-1111-4a4a-9b9b-000000000002"},
		{name: "an audit scan's record", review: base, uid: "u7/scan-20261201T060000Z", v: denyVerdict(policy.ModeAudit),
			want:     "buildguard would deny (audit mode) Pod hotfix: [fresh-image] hotfix: created 14s before admission, minAge 10m",
			wantLink: "https://review.example/buildguard/decisions/u7%2Fscan-20261201T060000Z"},
		{name: "no review URL", uid: "0d1e5a7c-1111-4a4a-9b9b-000000000003", v: denyVerdict(policy.ModeAudit),
			want: "buildguard would deny (audit mode) Pod hotfix: [fresh-image] hotfix: created 14s before admission, minAge 10m"},
		{name: "no UID", review: base, v: denyVerdict(policy.ModeEnforce),
			want: "buildguard denied Pod hotfix: [fresh-image] hotfix: created 14s before admission, minAge 10m"},
		{name: "a link longer than half a message", review: base, uid: strings.Repeat("u", 120), v: denyVerdict(policy.ModeEnforce),
			want: "buildguard denied Pod hotfix: [fresh-image] hotfix: created 14s before admission, minAge 10m"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sink := &fakeSink{}
			n := &Notifier{Sink: sink, Review: tc.review}
			n.Decided(t.Context(), decided(tc.uid, "CREATE", workload(), tc.v))
			if len(sink.events) != 1 {
				t.Fatalf("posted %d events, want 1", len(sink.events))
			}
			msg := sink.events[0].message
			if len(msg) > maxEventMessage {
				t.Errorf("message of %d bytes, want at most %d: %q", len(msg), maxEventMessage, msg)
			}
			text, link := msg, ""
			if tc.wantLink != "" {
				var ok bool
				text, ok = strings.CutSuffix(msg, " "+tc.wantLink)
				if !ok {
					t.Fatalf("message %q does not end with the link %s", msg, tc.wantLink)
				}
				link = tc.wantLink
			} else if strings.Contains(msg, "https://") {
				t.Errorf("message %q links, want no link", msg)
			}
			if prefix, cut := strings.CutSuffix(text, "…"); cut {
				if !strings.HasPrefix(prefix, tc.want) || len(msg) < maxEventMessage-len("…") {
					t.Errorf("message %q, want it to start %q and fill %d bytes", msg, tc.want, maxEventMessage)
				}
			} else if want := strings.TrimSpace(tc.want + " " + link); msg != want {
				t.Errorf("message = %q, want %q", msg, want)
			}
		})
	}
}
