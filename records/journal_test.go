package records

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"buildguard.dev/buildguard/evidence"
)

// TestJournalTornLine: a journal whose last line a crash cut short is
// opened with that line ended, so that the records appended next are
// read back, and only the torn line is lost.
func TestJournalTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j, err := openJournal(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(record(1), record(2)); err != nil {
		t.Fatal(err)
	}
	j.close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"ID":"torn","Ti`)
	f.Close()

	j, err = openJournal(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := j.append(record(3)); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() != j.bytes() {
		t.Errorf("journal size %d, file %v (%v)", j.bytes(), fi.Size(), err)
	}
	j.close()
	var ids []string
	bad, err := readJournal(path, func(d evidence.Decision) error {
		ids = append(ids, d.ID)
		return nil
	})
	if want := []string{record(1).ID, record(2).ID, record(3).ID}; err != nil || bad != 1 || !slices.Equal(ids, want) {
		t.Errorf("read back %q, %d bad lines, %v; want %q and the torn line", ids, bad, err, want)
	}
}

// TestJournalSpill: spilled records are written at once, readable by a
// replay, and left for syncSpilled to fsync; an append or a take fsyncs
// them as well.
func TestJournalSpill(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j, err := openJournal(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer j.close()
	unsynced := func() bool {
		j.mu.Lock()
		defer j.mu.Unlock()
		return j.unsynced
	}
	steps := []struct {
		name string
		do   func() error
		want bool
	}{
		{"spill", func() error { return j.spill(record(1)) }, true},
		{"syncSpilled", j.syncSpilled, false},
		{"syncSpilled with nothing spilled", j.syncSpilled, false},
		{"spill again", func() error { return j.spill(record(2), record(3)) }, true},
		{"append", func() error { return j.append(record(4)) }, false},
		{"spill after append", func() error { return j.spill(record(5)) }, true},
		{"take", func() error { _, err := j.take(); return err }, false},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := unsynced(); got != s.want {
			t.Errorf("after %s: unsynced = %v, want %v", s.name, got, s.want)
		}
	}
	var ids []string
	if _, err := readJournal(j.replayPath(), func(d evidence.Decision) error {
		ids = append(ids, d.ID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	want := []string{record(1).ID, record(2).ID, record(3).ID, record(4).ID, record(5).ID}
	if !slices.Equal(ids, want) {
		t.Errorf("replay file holds %q, want %q", ids, want)
	}
	if j.bytes() != 0 {
		t.Errorf("journal after take holds %d bytes, want 0", j.bytes())
	}
}
