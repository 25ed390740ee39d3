package evidence

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/testpostgres"
)

// The kill tests re-run the test binary as a child that writes reports and
// prints the EventID of each one AddReport acknowledged, kill it with
// SIGKILL in mid-stream, and check that every acknowledged report is in
// the database, whole.
const (
	killChildEnv  = "BUILDGUARD_TEST_KILL_CHILD"  // "sqlite" or "postgres": run as the child
	killTargetEnv = "BUILDGUARD_TEST_KILL_TARGET" // the child's database file or DSN
	killRoundEnv  = "BUILDGUARD_TEST_KILL_ROUND"  // a prefix for the child's EventIDs

	killWriters      = 4  // goroutines writing in the child
	killConnsPerRep  = 10 // connections per report
	killAfterAcks    = 200
	killChildTimeout = 2 * time.Minute
	killNode         = "kill-node"
)

func TestKillSQLite(t *testing.T) {
	if os.Getenv(killChildEnv) == "sqlite" {
		killChild(t, func(ctx context.Context) (Store, error) { return OpenSQLite(ctx, os.Getenv(killTargetEnv)) })
		return
	}
	path := filepath.Join(t.TempDir(), "evidence.db")
	var acked []string
	for round := range 3 {
		acked = append(acked, runAndKill(t, "TestKillSQLite", "sqlite", path, fmt.Sprint("r", round), nil)...)
		s := openSQLiteAt(t, path)
		checkAcked(t, s, acked)
		var ok string
		if err := s.r.QueryRowContext(t.Context(), "PRAGMA integrity_check").Scan(&ok); err != nil || ok != "ok" {
			t.Errorf("round %d: PRAGMA integrity_check = %q, %v", round, ok, err)
		}
		s.Close()
	}
}

// TestKillPostgres kills the writer and, on a server it started, the
// server too: its postmaster first, so that commits in flight are cut.
func TestKillPostgres(t *testing.T) {
	if os.Getenv(killChildEnv) == "postgres" {
		killChild(t, func(ctx context.Context) (Store, error) { return OpenPostgres(ctx, os.Getenv(killTargetEnv)) })
		return
	}
	srv := testpostgres.Start(t)
	dsn := srv.NewDatabase(t)
	var acked []string
	for round := range 2 {
		var killServer func()
		if srv.Managed() {
			killServer = func() { srv.Kill(t) }
		}
		acked = append(acked, runAndKill(t, "TestKillPostgres", "postgres", dsn, fmt.Sprint("r", round), killServer)...)
		if srv.Managed() {
			srv.Restart(t)
		}
		s := openPostgresDSN(t, dsn)
		checkAcked(t, s, acked)
		s.Close()
	}
}

// runAndKill runs the child until it has acknowledged killAfterAcks
// reports, kills it (after calling before, if not nil), and returns the
// EventIDs it acknowledged.
func runAndKill(t *testing.T, test, backend, target, round string, before func()) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.timeout="+killChildTimeout.String())
	cmd.Env = append(os.Environ(), killChildEnv+"="+backend, killTargetEnv+"="+target, killRoundEnv+"="+round)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill() // if the test fails before the kill
	var acked []string
	killed := false
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		id, ok := strings.CutPrefix(sc.Text(), "ack ")
		if !ok {
			continue
		}
		acked = append(acked, id)
		if len(acked) == killAfterAcks && !killed {
			if before != nil {
				before()
			}
			cmd.Process.Signal(syscall.SIGKILL)
			killed = true
		}
		// Acknowledgements written before the kill are still read: the
		// pipe holds them.
	}
	err = cmd.Wait()
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !killed || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("round %s: the child ended by itself (%v) after %d acknowledgements, not killed mid-stream", round, err, len(acked))
	}
	t.Logf("round %s: killed the writer after %d acknowledged reports", round, len(acked))
	return acked
}

// killChild writes reports until it is killed, printing "ack ID" for each
// one stored.
func killChild(t *testing.T, open func(context.Context) (Store, error)) {
	ctx := context.Background()
	s, err := open(ctx)
	if err != nil {
		t.Fatalf("child: open: %v", err)
	}
	round := os.Getenv(killRoundEnv)
	var mu sync.Mutex
	deadline := time.Now().Add(killChildTimeout - 10*time.Second)
	var wg sync.WaitGroup
	for w := range killWriters {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline); i++ {
				id := fmt.Sprintf("%s-w%d-%d", round, w, i)
				r := killReport(id)
				if _, _, err := s.AddReport(ctx, r); err != nil {
					// The server may be down: like a replica, try the next.
					time.Sleep(10 * time.Millisecond)
					continue
				}
				mu.Lock()
				fmt.Fprintf(os.Stdout, "ack %s\n", id)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
}

func killReport(id string) Report {
	r := Report{Node: killNode, Sensor: "ebpf",
		Builds: []Build{{Source: "agent", EventID: id, Tool: "buildkit", ImageID: "sha256:" + id, Tags: []string{"r/kill:" + id},
			Started: stT0, Finished: stT0.Add(time.Second)}}}
	for j := range killConnsPerRep {
		r.Connections = append(r.Connections, stConn(fmt.Sprintf("%s-c%d", id, j), killNode, stT0.Add(time.Duration(j)*time.Millisecond), "192.0.2.1"))
	}
	return r
}

// checkAcked checks that every acknowledged report is stored whole, and
// that every report stored at all is whole (one transaction each).
func checkAcked(t *testing.T, s Store, acked []string) {
	t.Helper()
	ctx := t.Context()
	cs, err := s.Connections(ctx, killNode, stT0.Add(-time.Hour), stT0.Add(time.Hour), 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	perReport := map[string]int{}
	for _, c := range cs {
		id, _, _ := strings.Cut(c.EventID, "-c")
		perReport[id]++
	}
	for id, n := range perReport {
		if n != killConnsPerRep {
			t.Errorf("report %s has %d of its %d connections stored: not atomic", id, n, killConnsPerRep)
		}
	}
	lost := 0
	for _, id := range acked {
		bs, err := s.BuildsByImageID(ctx, "sha256:"+id)
		if err != nil {
			t.Fatal(err)
		}
		if len(bs) != 1 || perReport[id] != killConnsPerRep {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged report %s: %d builds, %d connections stored; want 1, %d", id, len(bs), perReport[id], killConnsPerRep)
			}
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d acknowledged reports lost", lost, len(acked))
	}
	t.Logf("%d acknowledged reports all stored; %d reports stored in all", len(acked), len(perReport))
}
