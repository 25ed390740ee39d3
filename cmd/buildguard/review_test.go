package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/syncbuffer"

	"buildguard.dev/buildguard/internal/selfsigned"
	"buildguard.dev/buildguard/internal/testregistry"
)

func TestReviewFlagErrors(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	dir := t.TempDir()
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pol := writePolicy(t, "registries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n")
	base := []string{"serve", "--config", pol, "--tls-cert-file", files.Cert, "--tls-private-key-file", files.Key, "--listen", "127.0.0.1:0", "--log-format", "text"}
	tokens := filepath.Join(dir, "tokens.csv")
	os.WriteFile(tokens, []byte("0123456789abcdef0123,alice,1\n"), 0o600)
	for _, tc := range []struct {
		name string
		args []string
		err  string
	}{
		{"no users without a cluster", []string{"--review-listen", "127.0.0.1:0", "--store-sqlite", filepath.Join(dir, "a.db")}, "--review-listen without a cluster needs --review-token-file"},
		{"no store", []string{"--review-listen", "127.0.0.1:0", "--review-token-file", tokens}, "--review-listen needs a store"},
		{"token file without the UI", []string{"--review-token-file", tokens}, "need --review-listen"},
		{"bad token file", []string{"--review-listen", "127.0.0.1:0", "--store-sqlite", filepath.Join(dir, "b.db"), "--review-token-file", pol}, "token file"},
		{"short session key", []string{"--review-listen", "127.0.0.1:0", "--store-sqlite", filepath.Join(dir, "c.db"), "--review-token-file", tokens, "--review-session-key-file", tokens}, "want at least 32"},
		{"bad exceptions file", []string{"--exceptions-file", pol}, "exceptions file"},
		{"review URL with a query", []string{"--review-url", "https://review.example/?a=b"}, `--review-url "https://review.example/?a=b": want no credentials, query or fragment`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// serve's goroutines (retention) may still log after it
			// returns an error: a buffer safe for them.
			var stdout, stderr syncbuffer.Buffer
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			code := run(ctx, append(append([]string{}, base...), tc.args...), &stdout, &stderr)
			if code == 0 || !strings.Contains(stderr.String(), tc.err) {
				t.Errorf("serve %q = %d\nstderr: %s\nwant an error with %q", tc.args, code, stderr.String(), tc.err)
			}
		})
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestReviewWithoutCluster runs `buildguard serve` with a policy file, the
// review UI, a token file and an exceptions file: a denied image, granted
// an exception in the UI, is admitted at its next review.
func TestReviewWithoutCluster(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	dir := t.TempDir()
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	reg := testregistry.New(t)
	reg.Push(t, "acme/fresh:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-3 * time.Second)}))
	pol := writePolicy(t, "registries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n")
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte("0123456789abcdef0123,alice,1001,\"platform\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	exceptions := filepath.Join(dir, "exceptions.yaml")
	webhookAddr, reviewAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(t.Context())
	var stderr syncbuffer.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--config", pol, "--tls-cert-file", files.Cert, "--tls-private-key-file", files.Key,
			"--listen", webhookAddr, "--store-sqlite", filepath.Join(dir, "evidence.db"), "--log-format", "text",
			"--review-listen", reviewAddr, "--review-token-file", tokens, "--exceptions-file", exceptions, "--policy-reload-interval", "200ms"},
			io.Discard, &stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("serve did not stop")
		}
		if t.Failed() {
			t.Logf("serve's log:\n%s", stderr.String())
		}
	})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(files.CAPEM)
	jar, _ := cookiejar.New(nil)
	client := &http.Client{Timeout: 10 * time.Second, Jar: jar,
		Transport:     &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	eventually := func(what string, f func() error) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			err := f()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	image := reg.Host + "/acme/fresh:1"
	admit := func(uid string) (bool, string) {
		t.Helper()
		pod := fmt.Sprintf(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"fresh","namespace":"shop"},"spec":{"containers":[{"name":"app","image":%q}]}}`, image)
		review := fmt.Sprintf(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":%q,"kind":{"group":"","version":"v1","kind":"Pod"},
"resource":{"group":"","version":"v1","resource":"pods"},"namespace":"shop","name":"fresh","operation":"CREATE","userInfo":{"username":"dev"},"object":%s}}`, uid, pod)
		var out struct {
			Response struct {
				Allowed  bool     `json:"allowed"`
				Warnings []string `json:"warnings"`
				Status   struct {
					Message string `json:"message"`
				} `json:"status"`
			} `json:"response"`
		}
		eventually("the webhook answers", func() error {
			resp, err := client.Post("https://"+webhookAddr+"/validate", "application/json", strings.NewReader(review))
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("status %d", resp.StatusCode)
			}
			return json.NewDecoder(resp.Body).Decode(&out)
		})
		return out.Response.Allowed, out.Response.Status.Message + strings.Join(out.Response.Warnings, "\n")
	}
	if ok, msg := admit("uid-denied-1"); ok || !strings.Contains(msg, "[fresh-image]") {
		t.Fatalf("fresh image: allowed=%v %q, want a fresh-image denial", ok, msg)
	}

	base := "https://" + reviewAddr
	post := func(path string, form url.Values) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, base+path, strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", base)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually("the review UI answers", func() error {
		_, err := client.Get(base + "/login")
		return err
	})
	if resp := post("/login", url.Values{"token": {"wrong-token-0000000"}}); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("login with an unknown token = %d, want 401", resp.StatusCode)
	}
	if resp := post("/login", url.Values{"token": {"0123456789abcdef0123"}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login = %d, want 303", resp.StatusCode)
	}
	var page string
	eventually("the denial is listed", func() error {
		code, body := get("/decisions/uid-denied-1")
		if code != http.StatusOK {
			return fmt.Errorf("detail page %d", code)
		}
		page = body
		return nil
	})
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	ref := regexp.MustCompile(`name="image" value="([^"]+)"`).FindStringSubmatch(page)
	if csrf == nil || ref == nil {
		t.Fatalf("no grant form on the detail page:\n%s", page)
	}
	expires := time.Now().UTC().Add(48 * time.Hour).Format("2006-01-02T15:04")
	resp := post("/decisions/uid-denied-1/exceptions", url.Values{"csrf": {csrf[1]}, "image": {ref[1]}, "reason": {"INC-7: rebuilt tonight"}, "expires": {expires}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("grant = %d, want 303", resp.StatusCode)
	}
	b, err := os.ReadFile(exceptions)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"namespace: shop", "approvedBy: alice", "reason: 'INC-7: rebuilt tonight'", "decision: uid-denied-1", "@sha256:"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("exceptions file lacks %q:\n%s", want, b)
		}
	}
	if ok, msg := admit("uid-after-grant"); !ok || !strings.Contains(msg, "admitted by exception shop/review-") {
		t.Errorf("after the grant: allowed=%v %q, want admitted by the exception", ok, msg)
	}

	// The exceptions page lists the grant with its use, and revokes it.
	var form []string
	eventually("the exceptions page counts the admission", func() error {
		code, body := get("/exceptions")
		form = regexp.MustCompile(`name="source" value="([^"]+)">\s*<input type="hidden" name="namespace" value="([^"]+)">\s*<input type="hidden" name="name" value="([^"]+)">`).FindStringSubmatch(body)
		if code != http.StatusOK || form == nil || !strings.Contains(body, "INC-7: rebuilt tonight") {
			return fmt.Errorf("GET /exceptions = %d without the granted exception and its Revoke button", code)
		}
		if !regexp.MustCompile(`<td class="num"><a href="[^"]*">1</a></td>`).MatchString(body) {
			return errors.New("the exception's use is not counted")
		}
		return nil
	})
	resp = post("/exceptions/revoke", url.Values{"csrf": {csrf[1]}, "source": {html.UnescapeString(form[1])}, "namespace": {form[2]}, "name": {form[3]}})
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("revoke = %d, want 303", resp.StatusCode)
	}
	if b, _ := os.ReadFile(exceptions); strings.Contains(string(b), "INC-7") {
		t.Errorf("the revoked exception is still in the file:\n%s", b)
	}
	if ok, msg := admit("uid-after-revoke"); ok || !strings.Contains(msg, "[fresh-image]") {
		t.Errorf("after revoking: allowed=%v %q, want the fresh-image denial again", ok, msg)
	}
}
