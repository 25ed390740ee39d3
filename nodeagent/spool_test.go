package nodeagent

import (
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
	for _, b := range []string{"one", "two", "three"} {
		if err := s.Put([]byte(b)); err != nil {
			t.Fatal(err)
		}
	}
	seq, data, ok, err := s.Oldest()
	if err != nil || !ok || string(data) != "one" {
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
	if err := s2.Put([]byte("four")); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		seq, data, ok, err := s2.Oldest()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		got = append(got, string(data))
		s2.Remove(seq)
	}
	if strings.Join(got, ",") != "two,three,four" {
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
			s, err := OpenSpool(t.TempDir(), tt.max, func(int64) { drops++ })
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range tt.puts {
				if err := s.Put([]byte(p)); err != nil {
					t.Fatal(err)
				}
			}
			var got []string
			for {
				seq, data, ok, err := s.Oldest()
				if err != nil {
					t.Fatal(err)
				}
				if !ok {
					break
				}
				got = append(got, string(data))
				s.Remove(seq)
			}
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
		s.Put([]byte("0123456789"))
	}
	drops := 0
	s2, err := OpenSpool(dir, 25, func(int64) { drops++ })
	if err != nil {
		t.Fatal(err)
	}
	if n, b := s2.Len(); n != 2 || b != 20 || drops != 3 {
		t.Errorf("reopened with a smaller bound: %d batches, %d bytes, %d drops; want 2, 20, 3", n, b, drops)
	}
}
