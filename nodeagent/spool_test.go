package nodeagent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSpoolOrderAndRestart(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Batches are JSON: what is not is taken for damage at open.
	for _, b := range []string{`"one"`, `"two"`, `"three"`} {
		if err := s.Put([]byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	seq, data, ok, err := s.Oldest()
	if err != nil || !ok || string(data) != `"one"` {
		t.Fatalf("Oldest() = %q, %v, %v; want one", data, ok, err)
	}
	if err := s.Remove(seq); err != nil {
		t.Fatal(err)
	}
	// A crash left a half-written file behind.
	if err := os.WriteFile(filepath.Join(dir, ".tmp-123"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Restart: what was buffered is still there, in order, and new
	// batches go after it.
	s2, err := OpenSpool(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-s2.Ready():
	default:
		t.Error("a reopened spool with batches is not ready")
	}
	if err := s2.Put([]byte(`"four"`)); err != nil {
		t.Fatal(err)
	}
	got := drain(t, s2)
	if strings.Join(got, ",") != `"two","three","four"` {
		t.Errorf("after restart: %v, want [two three four]", got)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-123")); !os.IsNotExist(err) {
		t.Errorf("half-written file not removed: %v", err)
	}
	if n, b := s2.Len(); n != 0 || b != 0 {
		t.Errorf("Len() = %d, %d after draining", n, b)
	}
}

func TestSpoolDropsOldestWhenFull(t *testing.T) {
	tests := []struct {
		name      string
		max       int64
		puts      []string
		want      []string
		wantDrops int
	}{
		{"under the bound", 100, []string{"aaaa", "bbbb"}, []string{"aaaa", "bbbb"}, 0},
		{"oldest go first", 10, []string{"aaaa", "bbbb", "cccc", "dddd"}, []string{"cccc", "dddd"}, 2},
		{"a batch larger than the bound is kept alone", 3, []string{"aa", "bbbbbb"}, []string{"bbbbbb"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			drops := 0
			s, err := OpenSpool(t.TempDir(), tt.max, func(string, int64) { drops++ })
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range tt.puts {
				if err := s.Put([]byte(p)); err != nil {
					t.Fatal(err)
				}
			}
			got := drain(t, s)
			if strings.Join(got, ",") != strings.Join(tt.want, ",") || drops != tt.wantDrops {
				t.Errorf("kept %v with %d drops, want %v with %d", got, drops, tt.want, tt.wantDrops)
			}
		})
	}
}

func TestSpoolBoundAppliesAtOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		s.Put([]byte("1234567890"))
	}
	drops := 0
	s2, err := OpenSpool(dir, 25, func(string, int64) { drops++ })
	if err != nil {
		t.Fatal(err)
	}
	if n, b := s2.Len(); n != 2 || b != 20 || drops != 3 {
		t.Errorf("reopened with a smaller bound: %d batches, %d bytes, %d drops; want 2, 20, 3", n, b, drops)
	}
}

// A batch torn or damaged on disk is found at open, deleted and counted,
// and the batches around it are still sent.
func TestSpoolSkipsCorruptBatchesAtOpen(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenSpool(dir, 1<<20, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []string{`{"n":1}`, `{"n":2}`, `{"n":3}`} {
		if err := s.Put([]byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	// The second is cut short, as by a disk that lost its tail.
	second := filepath.Join(dir, fmt.Sprintf("%020d.json", 2))
	if err := os.WriteFile(second, []byte(`{"n":`), 0o600); err != nil {
		t.Fatal(err)
	}
	var reasons []string
	s2, err := OpenSpool(dir, 1<<20, func(reason string, _ int64) { reasons = append(reasons, reason) })
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, s2)
	if strings.Join(got, ",") != `{"n":1},{"n":3}` || strings.Join(reasons, ",") != DropCorrupt {
		t.Errorf("reopened: sent %v, dropped %v; want the first and third, one corrupt", got, reasons)
	}
	if _, err := os.Stat(second); !os.IsNotExist(err) {
		t.Errorf("corrupt batch still on disk: %v", err)
	}
}

// A batch that cannot be read is retried a few times, then dropped, so
// that the batches behind it are sent.
func TestSpoolDropsAnUnreadableBatch(t *testing.T) {
	dir := t.TempDir()
	var reasons []string
	s, err := OpenSpool(dir, 1<<20, func(reason string, _ int64) { reasons = append(reasons, reason) })
	if err != nil {
		t.Fatal(err)
	}
	s.Put([]byte(`{"n":1}`))
	s.Put([]byte(`{"n":2}`))
	// Reading the first fails (EISDIR, as a damaged file would with EIO).
	first := filepath.Join(dir, fmt.Sprintf("%020d.json", 1))
	if err := os.Remove(first); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(first, 0o700); err != nil {
		t.Fatal(err)
	}
	for i := range maxReadFails - 1 {
		if _, _, _, err := s.Oldest(); err == nil {
			t.Fatalf("read %d of an unreadable batch: no error", i+1)
		}
	}
	_, data, ok, err := s.Oldest()
	if err != nil || !ok || string(data) != `{"n":2}` || strings.Join(reasons, ",") != DropUnreadable {
		t.Errorf("Oldest() = %q, %v, %v after %d failed reads, dropped %v; want the second batch, one unreadable", data, ok, err, maxReadFails-1, reasons)
	}
}

func drain(t *testing.T, s *Spool) []string {
	t.Helper()
	var got []string
	for {
		seq, data, ok, err := s.Oldest()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			return got
		}
		got = append(got, string(data))
		s.Remove(seq)
	}
}
