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
