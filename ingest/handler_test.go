package ingest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"buildguard.dev/buildguard/e2e"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/ingest"
)

const agentUser = "system:serviceaccount:buildguard-system:buildguard-node-agent"

// testEnv is a real control plane with the agent's service accounts and
// tokens, and a real SQLite store.
type testEnv struct {
	ctx                                                  context.Context
	kube                                                 kubernetes.Interface
	store                                                *evidence.SQLite
	agentToken, boundToken, wrongAudience, intruderToken string
}

func newTestEnv(tb testing.TB) *testEnv {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	tb.Cleanup(cancel)
	dir := tb.TempDir()
	cp, err := e2e.StartControlPlane(ctx, dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(cp.Stop)
	kubectl := func(stdin string, args ...string) string {
		tb.Helper()
		var out string
		var err error
		if stdin != "" {
			out, err = cp.Kubectl(ctx, strings.NewReader(stdin), args...)
		} else {
			out, err = cp.Kubectl(ctx, nil, args...)
		}
		if err != nil {
			tb.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	kubectl("", "create", "namespace", "buildguard-system")
	kubectl("", "create", "serviceaccount", "buildguard-node-agent", "-n", "buildguard-system")
	kubectl("", "create", "serviceaccount", "intruder", "-n", "buildguard-system")
	// A node and an agent pod on it: a token bound to the pod carries the
	// node's name.
	kubectl(`apiVersion: v1
kind: Node
metadata: {name: worker-7}
---
apiVersion: v1
kind: Pod
metadata: {name: agent-worker-7, namespace: buildguard-system}
spec:
  nodeName: worker-7
  serviceAccountName: buildguard-node-agent
  containers: [{name: agent, image: agent:1}]
`, "apply", "-f", "-")
	env := &testEnv{ctx: ctx}
	env.agentToken = kubectl("", "create", "token", "buildguard-node-agent", "-n", "buildguard-system", "--audience=buildguard")
	env.boundToken = kubectl("", "create", "token", "buildguard-node-agent", "-n", "buildguard-system", "--audience=buildguard",
		"--bound-object-kind=Pod", "--bound-object-name=agent-worker-7")
	env.wrongAudience = kubectl("", "create", "token", "buildguard-node-agent", "-n", "buildguard-system", "--audience=elsewhere")
	env.intruderToken = kubectl("", "create", "token", "intruder", "-n", "buildguard-system", "--audience=buildguard")
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		tb.Fatal(err)
	}
	if env.kube, err = kubernetes.NewForConfig(cfg); err != nil {
		tb.Fatal(err)
	}
	if env.store, err = evidence.OpenSQLite(ctx, filepath.Join(dir, "evidence.db")); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { env.store.Close() })
	return env
}

// TestHandler authenticates reporters with TokenReview against a real
// kube-apiserver and stores reports in a real SQLite store.
func TestHandler(t *testing.T) {
	env := newTestEnv(t)
	ctx, kube, store := env.ctx, env.kube, env.store
	agentToken, boundToken, wrongAudience, intruderToken := env.agentToken, env.boundToken, env.wrongAudience, env.intruderToken
	h := &ingest.Handler{
		Store:        store,
		Auth:         &ingest.TokenReviewer{Client: kube, Audiences: []string{"buildguard"}, Allowed: []string{agentUser}},
		Formats:      ingest.Formats(),
		MaxBodyBytes: 64 << 10,
		Burst:        1000,
	}
	post := func(path, token, body string) (int, string) {
		r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
		if token != "" {
			r.Header.Set("Authorization", "Bearer "+token)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w.Code, w.Body.String()
	}
	now := time.Now().UTC().Truncate(time.Second)
	report := func(node string, conns ...string) string {
		return fmt.Sprintf(`{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":%q,"sensor":"ebpf",
"builds":[{"eventID":"b-1","tool":"docker","imageID":"sha256:%064x","tags":["localhost:5000/e2e/x:1"],"started":%q,"finished":%q}],
"connections":[%s]}`, node, 1, now.Add(-time.Minute).Format(time.RFC3339), now.Format(time.RFC3339), strings.Join(conns, ","))
	}
	conn := func(id, ip string) string {
		return fmt.Sprintf(`{"eventID":%q,"time":%q,"process":"wget","pid":42,"cmdline":"wget http://%s/p","destIP":%q,"destPort":8080}`,
			id, now.Add(-30*time.Second).Format(time.RFC3339), ip, ip)
	}

	tests := []struct {
		name     string
		path     string
		token    string
		body     string
		wantCode int
		want     string
	}{
		{"no token", "/v1/node-reports", "", report("worker-1"), 401, "missing bearer token"},
		{"garbage token", "/v1/node-reports", "not-a-token", report("worker-1"), 401, "not authenticated"},
		{"wrong audience", "/v1/node-reports", wrongAudience, report("worker-1"), 401, "not authenticated"},
		{"service account not allowed", "/v1/node-reports", intruderToken, report("worker-1"), 403, "buildguard-system:intruder may not report"},
		{"accepted", "/v1/node-reports", agentToken, report("worker-1", conn("c-1", "203.0.113.9")), 200, `"accepted":{"builds":1,"connections":1},"duplicates":0`},
		{"retried batch is not counted twice", "/v1/node-reports", agentToken, report("worker-1", conn("c-1", "203.0.113.9")), 200, `"accepted":{"builds":0,"connections":0},"duplicates":2`},
		{"a bad item does not drop the good ones", "/v1/node-reports", agentToken, report("worker-1", conn("c-2", "203.0.113.10"), conn("c-3", "999.1.1.1")), 200, `"connections":1`},
		{"unknown format path", "/v1/node-reports/syslog", agentToken, "{}", 404, "no report format"},
		{"not JSON", "/v1/node-reports", agentToken, "<xml/>", 400, ""},
		{"oversized", "/v1/node-reports", agentToken, `{"x":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "body larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := post(tt.path, tt.token, tt.body)
			if code != tt.wantCode || !strings.Contains(body, tt.want) {
				t.Errorf("POST %s = %d %s, want %d containing %q", tt.path, code, body, tt.wantCode, tt.want)
			}
		})
	}

	t.Run("the token's node wins over the body's", func(t *testing.T) {
		code, body := post("/v1/node-reports", boundToken, report("laptop-claims-innocence", conn("c-9", "203.0.113.77")))
		if code != 200 || !strings.Contains(body, `"node":"worker-7"`) {
			t.Fatalf("POST = %d %s, want the report taken as worker-7's", code, body)
		}
		cs, err := store.Connections(ctx, "worker-7", now.Add(-time.Hour), now.Add(time.Hour), 10)
		if err != nil || len(cs) != 1 || cs[0].DestIP.String() != "203.0.113.77" {
			t.Errorf("worker-7's connections = %+v, %v", cs, err)
		}
	})

	t.Run("stored evidence is what admission reads", func(t *testing.T) {
		bs, err := store.BuildsByImageID(ctx, fmt.Sprintf("sha256:%064x", 1))
		if err != nil || len(bs) == 0 {
			t.Fatalf("BuildsByImageID = %+v, %v", bs, err)
		}
	})

	t.Run("rate limit per reporter", func(t *testing.T) {
		limited := &ingest.Handler{Store: store, Auth: h.Auth, Formats: ingest.Formats(), Rate: 1, Burst: 2}
		codes := []int{}
		for range 4 {
			r := httptest.NewRequest(http.MethodPost, "/v1/node-reports", bytes.NewReader([]byte(report("worker-1"))))
			r.Header.Set("Authorization", "Bearer "+agentToken)
			w := httptest.NewRecorder()
			limited.ServeHTTP(w, r)
			codes = append(codes, w.Code)
		}
		if codes[0] != 200 || codes[3] != http.StatusTooManyRequests {
			t.Errorf("codes = %v, want 200 first and 429 once the burst is spent", codes)
		}
	})

	var res ingest.Result
	_, body := post("/v1/node-reports/falco", agentToken, `{"uuid":"f-1","output":"x","priority":"Warning","rule":"Unexpected outbound connection destination","time":"`+
		now.Format(time.RFC3339Nano)+`","hostname":"worker-2","output_fields":{"fd.rip":"198.51.100.4","fd.rport":443,"proc.name":"curl","proc.pid":77,"proc.cmdline":"curl https://x","evt.time":`+
		fmt.Sprint(now.UnixNano())+`}}`)
	if err := json.Unmarshal([]byte(body), &res); err != nil || res.Accepted.Connections != 1 {
		t.Errorf("Falco alert = %s (%v), want one connection accepted", body, err)
	}
}
