package records

import (
	"path/filepath"
	"testing"
	"time"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/testpostgres"
)

// TestRecorderPostgresOutage runs the Recorder on a real PostgreSQL
// server that is killed while decisions keep coming, as a failover or a
// crash of the database host would: admission goes on, the records wait in
// the journal, and every one of them is in the store once the server is
// back.
func TestRecorderPostgresOutage(t *testing.T) {
	srv := testpostgres.Start(t)
	if !srv.Managed() {
		t.Skip("the server of " + testpostgres.EnvDSN + " cannot be killed")
	}
	st, err := evidence.OpenPostgres(t.Context(), srv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	r, err := New(st, filepath.Join(t.TempDir(), "journal"), WithBackoff(10*time.Millisecond, 200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	const before, during = 50, 100
	for i := range before {
		r.Record(record(i))
	}
	waitFor(t, "records stored before the outage", func() bool { return r.Stats().Stored.Load() == before })

	srv.Kill(t)
	start := time.Now()
	for i := before; i < before+during; i++ {
		r.Record(record(i))
	}
	if d := time.Since(start); d > time.Second {
		// Not a timing goal: Record must not wait for the store at all,
		// and 100 calls taking a second would mean it did.
		t.Errorf("recording %d decisions with the store down took %v", during, d)
	}
	waitFor(t, "store errors seen", func() bool { return r.Stats().StoreErrors.Load() > 0 })

	srv.Restart(t)
	waitFor(t, "every record stored after the restart", func() bool {
		return r.Stats().Stored.Load() >= before+during && !r.journal.pending()
	})
	if got := storedIDs(t, st, before+during); got != before+during {
		t.Errorf("stored %d of %d records after the outage", got, before+during)
	}
	if got := r.Stats().Dropped.Load(); got != 0 {
		t.Errorf("Dropped = %d, want 0", got)
	}
}
