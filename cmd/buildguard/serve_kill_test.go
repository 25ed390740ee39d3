package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/syncbuffer"

	"buildguard.dev/buildguard/internal/selfsigned"
	"buildguard.dev/buildguard/internal/testpostgres"
)

// The kill test streams admission reviews that buildguard denies at the
// real `buildguard serve` process, kills it with SIGKILL in mid-stream,
// starts it again on the same store, and checks with `buildguard
// denials` that every denial the webhook answered is recorded.
const (
	killStreamers = 8   // concurrent reviews, as an API server sends them
	killAfterAcks = 400 // acknowledged denials per round before the kill
	killDeadline  = 60 * time.Second
)

// killRound is one run of the server: the policy mode it runs in
// (enforce answers deny, audit answers would-deny) and the namespace its
// reviews are in, so that `buildguard denials -n` lists one round (at
// most 1000 records) at a time. With outage, the store is killed halfway
// and started again only after the server was killed: the denials
// acknowledged in between are in the decision journal alone.
type killRound struct {
	mode, namespace string
	outage          bool
	args            []string // more serve flags
}

// killStore stops and starts the store for an outage round.
type killStore struct {
	down, up func()
}

// TestServeKillKeepsDenials is issue 14's regression test: with the
// records written after the answer, a SIGKILL lost most acknowledged
// denials (84% with SQLite).
func TestServeKillKeepsDenials(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs it")
	}
	exe := buildBinary(t)
	rounds := []killRound{{mode: "enforce", namespace: "kill-r0"}, {mode: "audit", namespace: "kill-r1"}}
	t.Run("sqlite", func(t *testing.T) {
		// Store first is the default with SQLite: a round journal first.
		db := filepath.Join(t.TempDir(), "evidence.db")
		journalFirst := killRound{mode: "enforce", namespace: "kill-r2", args: []string{"--decision-commit=journal"}}
		runKillRounds(t, exe, []string{"--store-sqlite", db}, nil, append(rounds, journalFirst), killStore{})
	})
	t.Run("postgres", func(t *testing.T) {
		srv := testpostgres.Start(t)
		env := []string{postgresDSNEnv + "=" + srv.NewDatabase(t)}
		journal := filepath.Join(t.TempDir(), "decisions.journal")
		// Journal first is the default with PostgreSQL: a round store first.
		pgRounds := []killRound{rounds[0], {mode: "audit", namespace: "kill-r1", args: []string{"--decision-commit=store"}}}
		var ks killStore
		if srv.Managed() {
			// Store first, so that the journal takes over from the store.
			pgRounds = append(pgRounds, killRound{mode: "enforce", namespace: "kill-r2", outage: true, args: []string{"--decision-commit=store"}})
			ks = killStore{down: func() { srv.Kill(t) }, up: func() { srv.Restart(t) }}
		}
		runKillRounds(t, exe, []string{"--decision-journal", journal}, env, pgRounds, ks)
	})
}

// buildBinary builds cmd/buildguard, without the race detector, as
// TestKubectlPlugin does (so that the two share the build cache).
func buildBinary(t *testing.T) string {
	t.Helper()
	exe := filepath.Join(t.TempDir(), "buildguard")
	build := exec.Command("go", "build", "-o", exe, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return exe
}

// runKillRounds runs the server with storeArgs (and env) once per round,
// kills it, and after each restart checks every round so far.
func runKillRounds(t *testing.T, exe string, storeArgs, env []string, rounds []killRound, ks killStore) {
	dir := t.TempDir()
	files, err := selfsigned.Write(dir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(files.CAPEM)
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, MaxIdleConnsPerHost: killStreamers}}
	defer client.CloseIdleConnections()
	policyFile := filepath.Join(dir, "policy.yaml")
	acked := map[string][]string{} // namespace → acknowledged UIDs

	for i, r := range rounds {
		pol := fmt.Sprintf("apiVersion: buildguard.dev/v1alpha1\nkind: Policy\nmode: %s\nregistries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n", r.mode)
		if err := os.WriteFile(policyFile, []byte(pol), 0o644); err != nil {
			t.Fatal(err)
		}
		args := append([]string{"--config", policyFile, "--tls-cert-file", files.Cert, "--tls-private-key-file", files.Key}, storeArgs...)
		srv := startServe(t, exe, env, append(args, r.args...), client)
		var halfway func()
		if r.outage {
			halfway = ks.down
		}
		acked[r.namespace] = streamAndKill(t, client, srv, r, fmt.Sprintf("r%d", i), halfway)
		t.Logf("round %d (%s): killed serve after %d acknowledged denials", i, r.mode, len(acked[r.namespace]))
		if r.outage {
			if n := journaledBytes(storeArgs); n == 0 {
				t.Errorf("round %d: the store was down, and the decision journal is empty", i)
			} else {
				t.Logf("round %d: the store was down; %d bytes of denials in the journal", i, n)
			}
			ks.up()
		}

		// The next process finds what the killed one acknowledged.
		srv = startServe(t, exe, env, args, client)
		for _, past := range rounds[:i+1] {
			checkListed(t, exe, env, storeArgs, past.namespace, acked[past.namespace])
		}
		srv.stop(t)
	}
}

// journaledBytes is the size of the decision journal named in args,
// with the file being replayed.
func journaledBytes(args []string) int64 {
	i := slices.Index(args, "--decision-journal")
	if i < 0 || i+1 >= len(args) {
		return 0
	}
	var n int64
	for _, p := range []string{args[i+1], args[i+1] + ".replay"} {
		if fi, err := os.Stat(p); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// serveProc is a running `buildguard serve`.
type serveProc struct {
	cmd    *exec.Cmd
	addr   string
	stderr *syncbuffer.Buffer
	exited chan struct{}
}

// startServe starts serve on a free loopback port and waits until it
// answers /healthz.
func startServe(t *testing.T, exe string, env, args []string, client *http.Client) *serveProc {
	t.Helper()
	addr := freeAddr(t)
	cmd := exec.Command(exe, append([]string{"serve", "--listen", addr, "--log-format", "text"}, args...)...)
	cmd.Env = append(append(os.Environ(), "KUBERNETES_SERVICE_HOST="), env...)
	p := &serveProc{cmd: cmd, addr: addr, stderr: &syncbuffer.Buffer{}, exited: make(chan struct{})}
	cmd.Stderr = p.stderr
	// Never outlive the test binary.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.exited
		if t.Failed() {
			t.Logf("serve's log (tail):\n%s", tail(p.stderr.String(), 4000))
		}
	})
	deadline := time.Now().Add(killDeadline)
	for {
		resp, err := client.Get("https://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case <-p.exited:
			t.Fatalf("serve exited at start: %v\n%s", cmd.ProcessState, p.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve not healthy after %v: %v\n%s", killDeadline, err, p.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the server as Kubernetes does, with SIGTERM.
func (p *serveProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(killDeadline):
		t.Errorf("serve did not stop within %v of SIGTERM", killDeadline)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// streamAndKill sends denied reviews from killStreamers goroutines until
// killAfterAcks were answered as denials, kills the server with SIGKILL
// without waiting for the answers in flight, and returns the UIDs of
// every review answered as a denial (deny in enforce mode, would-deny in
// audit mode), those answered after the kill was decided included. When
// halfway is not nil, it is called once half of them were, while the
// stream goes on.
func streamAndKill(t *testing.T, client *http.Client, p *serveProc, r killRound, prefix string, halfway func()) []string {
	t.Helper()
	var (
		mu       sync.Mutex
		acked    []string
		failed   error
		kill     = make(chan struct{})
		half     = make(chan struct{})
		once     sync.Once
		halfOnce sync.Once
		wg       sync.WaitGroup
	)
	want := "deny"
	if r.mode == "audit" {
		want = "would-deny"
	}
	for s := range killStreamers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-p.exited:
					return
				default:
				}
				uid := fmt.Sprintf("%s-s%d-%06d", prefix, s, i)
				verdict, err := reviewDenied(client, p.addr, r.namespace, uid)
				if err != nil {
					select {
					case <-p.exited: // cut off by the kill: not acknowledged
						return
					case <-kill:
						return
					default:
					}
					mu.Lock()
					failed = errors.Join(failed, fmt.Errorf("review %s: %w", uid, err))
					mu.Unlock()
					once.Do(func() { close(kill) })
					return
				}
				if verdict != want {
					mu.Lock()
					failed = errors.Join(failed, fmt.Errorf("review %s: verdict %q, want %q", uid, verdict, want))
					mu.Unlock()
					once.Do(func() { close(kill) })
					return
				}
				mu.Lock()
				acked = append(acked, uid)
				n := len(acked)
				mu.Unlock()
				if n >= killAfterAcks/2 {
					halfOnce.Do(func() { close(half) })
				}
				if n >= killAfterAcks {
					once.Do(func() { close(kill) })
				}
			}
		})
	}
	timeout := time.After(killDeadline)
	if halfway != nil {
		select {
		case <-half:
			halfway()
		case <-kill: // failed
		case <-timeout:
		}
	}
	select {
	case <-kill:
	case <-timeout:
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		t.Fatalf("round %s: %d denials acknowledged in %v, want %d", prefix, n, killDeadline, killAfterAcks)
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	wg.Wait()
	if failed != nil {
		t.Fatalf("round %s: %v", prefix, failed)
	}
	ws, _ := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("round %s: serve ended by itself (%v), not killed", prefix, p.cmd.ProcessState)
	}
	return acked
}

// reviewDenied sends the review of a Pod whose image is in a registry
// the policy does not allow, and returns the verdict of the answer.
func reviewDenied(client *http.Client, addr, ns, uid string) (string, error) {
	body := fmt.Sprintf(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":%q,
"kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},
"namespace":%q,"name":"intruder","operation":"CREATE","userInfo":{"username":"mallory"},
"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"intruder","namespace":%q},
"spec":{"containers":[{"name":"app","image":"untrusted.example/tools/app:1"}]}}}}`, uid, ns, ns)
	resp, err := client.Post("https://"+addr+"/validate?timeout=10s", "application/json", strings.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	var out struct {
		Response struct {
			UID              string            `json:"uid"`
			Allowed          bool              `json:"allowed"`
			AuditAnnotations map[string]string `json:"auditAnnotations"`
			Status           struct {
				Code int `json:"code"`
			} `json:"status"`
		} `json:"response"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return "", fmt.Errorf("%w: %s", err, b)
	}
	rs := out.Response
	v := rs.AuditAnnotations["verdict"]
	switch {
	case rs.UID != uid:
		return "", fmt.Errorf("answer for uid %q: %s", rs.UID, b)
	case v == "deny" && (rs.Allowed || rs.Status.Code != http.StatusForbidden):
		return "", fmt.Errorf("verdict deny, allowed %v, code %d: %s", rs.Allowed, rs.Status.Code, b)
	case v == "would-deny" && !rs.Allowed:
		return "", fmt.Errorf("verdict would-deny, not allowed: %s", b)
	}
	return v, nil
}

// checkListed waits until `buildguard denials -n ns` lists every UID of
// acked (a restarted server may still be replaying its journal), and
// fails naming what it does not list.
func checkListed(t *testing.T, exe string, env, storeArgs []string, ns string, acked []string) {
	t.Helper()
	args := append([]string{"denials", "-n", ns, "--since", "0", "--limit", "1000", "--verdict", "deny,would-deny", "-o", "json"}, storeArgs...)
	if i := slices.Index(args, "--decision-journal"); i >= 0 {
		args = slices.Delete(args, i, i+2) // a serve flag
	}
	var missing []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), env...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("buildguard %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		listed := map[string]bool{}
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var d struct {
				ID string `json:"id"`
			}
			if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
				t.Fatalf("denials -o json line %q: %v", sc.Text(), err)
			}
			listed[d.ID] = true
		}
		missing = missing[:0]
		for _, uid := range acked {
			if !listed[uid] {
				missing = append(missing, uid)
			}
		}
		if len(missing) == 0 {
			t.Logf("%s: all %d acknowledged denials listed (%d records)", ns, len(acked), len(listed))
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Errorf("%s: %d of %d acknowledged denials are not listed by buildguard denials, e.g. %q",
		ns, len(missing), len(acked), missing[:min(5, len(missing))])
}

func TestServeDecisionCommitFlag(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	pol := writePolicy(t, "registries:\n  allow: [\"127.0.0.1:*/acme/*\"]\n")
	var stdout, stderr syncbuffer.Buffer
	code := run(t.Context(), []string{"serve", "--config", pol, "--listen", "127.0.0.1:0", "--decision-commit", "memory"}, &stdout, &stderr)
	if code != exitError || !strings.Contains(stderr.String(), `--decision-commit "memory": want store or journal`) {
		t.Errorf("serve --decision-commit memory = %d, %q; want %d and a usage error", code, stderr.String(), exitError)
	}
}
