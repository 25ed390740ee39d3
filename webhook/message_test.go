package webhook_test

import (
	"fmt"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"buildguard.dev/buildguard/webhook"
)

// TestDenyMessageIsBounded: a Pod of 5,000 images from unapproved
// registries made a 1.46 MB denial message. The message stays under
// webhook.MaxDenyMessage, shows what fits whole, and says how many
// findings on how many images it leaves out, and of which rules; the
// audit annotations still name every rule.
func TestDenyMessageIsBounded(t *testing.T) {
	f := newFixture(t, "")
	for _, n := range []int{1, 20, 5000} {
		var s corev1.PodSpec
		for i := range n {
			s.Containers = append(s.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: fmt.Sprintf("evil.example/acme/img%d:1", i)})
		}
		// One image also fresh, listed last: its rule is among those left
		// out, and named.
		s.Containers = append(s.Containers, corev1.Container{Name: "fresh", Image: f.fresh})
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "many", Namespace: "shop"}, Spec: s}
		resp := f.handler.Review(t.Context(), request(t, admissionv1.Create, pod, metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}))
		if resp.Allowed || resp.Result == nil {
			t.Fatalf("%d images: allowed %v, want a denial", n, resp.Allowed)
		}
		msg := resp.Result.Message
		if len(msg) > webhook.MaxDenyMessage {
			t.Errorf("%d images: message of %d bytes, want at most %d", n, len(msg), webhook.MaxDenyMessage)
		}
		if !strings.HasPrefix(msg, fmt.Sprintf(`buildguard denied Pod "many" in namespace "shop": %d of %d images failed policy.`, n+1, n+1)) ||
			!strings.HasSuffix(msg, "\n"+webhook.DefaultExceptionHelp) {
			t.Errorf("%d images: message %.200q … %.200q, want the summary first and the help last", n, msg, msg[max(0, len(msg)-200):])
		}
		shown := strings.Count(msg, "\n  [")
		if n <= 20 {
			if shown != n+1 || strings.Contains(msg, "not shown") {
				t.Errorf("%d images: %d findings shown, want all %d and nothing left out:\n%s", n, shown, n+1, msg)
			}
			continue
		}
		want := fmt.Sprintf("\n… %d more findings on %d more images not shown (fresh-image, unapproved-registry)", n+1-shown, n+1-shown)
		if shown < 20 || !strings.Contains(msg, want) {
			t.Errorf("%d images: %d findings shown; want at least 20 and %q in:\n%s", n, shown, want, msg)
		}
		if rules := resp.AuditAnnotations[webhook.AnnotationRules]; rules != "fresh-image,unapproved-registry" {
			t.Errorf("%d images: audit annotation rules = %q, want every rule", n, rules)
		}
	}
}

// TestWarningsAreBounded: admitted with warnings (here in audit mode), a
// Pod of 5,000 images gets at most webhook.MaxWarnings of them — the API
// server keeps only the first 4 KiB anyway — the last saying how many
// more findings there are.
func TestWarningsAreBounded(t *testing.T) {
	f := newFixture(t, "apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nmode: audit\nregistries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n")
	for _, n := range []int{3, 5000} {
		var s corev1.PodSpec
		for i := range n {
			s.Containers = append(s.Containers, corev1.Container{Name: fmt.Sprintf("c%d", i), Image: fmt.Sprintf("evil.example/acme/img%d:1", i)})
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "many", Namespace: "shop"}, Spec: s}
		resp := f.handler.Review(t.Context(), request(t, admissionv1.Create, pod, metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}))
		if !resp.Allowed {
			t.Fatalf("%d images in audit mode: denied, want admitted with warnings", n)
		}
		if n == 3 {
			if len(resp.Warnings) != 3 {
				t.Errorf("3 images: %d warnings, want 3: %q", len(resp.Warnings), resp.Warnings)
			}
			continue
		}
		if len(resp.Warnings) != webhook.MaxWarnings {
			t.Fatalf("%d images: %d warnings, want %d", n, len(resp.Warnings), webhook.MaxWarnings)
		}
		want := fmt.Sprintf("buildguard: %d more findings not shown", n-(webhook.MaxWarnings-1))
		if last := resp.Warnings[len(resp.Warnings)-1]; last != want {
			t.Errorf("%d images: last warning %q, want %q", n, last, want)
		}
	}
}
