package nodeagent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// DefaultBufferMaxBytes is Spool's bound when none is given: 64 MiB.
const DefaultBufferMaxBytes = 64 << 20

// Spool is a directory of batches waiting to be sent, one file each, named
// by a sequence number so that they are sent in the order they were made.
// A batch is on disk (written, fsynced, renamed into place, directory
// fsynced) before Put returns, so a crash or a restart loses none. When
// the batches exceed MaxBytes, the oldest are deleted. A batch that cannot
// be read back (a file damaged on disk) is deleted too, rather than
// stopping the batches behind it.
type Spool struct {
	dir      string
	maxBytes int64
	// onDrop is told about each batch deleted unsent, and why.
	onDrop func(reason string, bytes int64)

	mu    sync.Mutex
	files []spoolFile // oldest first
	total int64
	next  uint64
	ready chan struct{} // signalled (non-blocking) on Put
}

type spoolFile struct {
	seq  uint64
	size int64
	// fails counts the failed reads of the file in a row.
	fails int
}

// Reasons given to Spool's onDrop.
const (
	DropBufferFull = "buffer-full" // the oldest made room
	DropCorrupt    = "corrupt"     // not JSON when read back at open
	DropUnreadable = "unreadable"  // reading it failed maxReadFails times
)

// maxReadFails is how many reads of a batch in a row may fail before it is
// dropped: a transient error (out of file descriptors) is retried, a
// damaged file does not block the spool forever.
const maxReadFails = 3

const spoolSuffix = ".json"

// OpenSpool opens (creating) dir as a spool of at most maxBytes (0: the
// default). Half-written files of a crash are removed; batches of an
// earlier run are kept and sent first, but those that are not JSON (torn
// or damaged on disk) are deleted and told to onDrop as DropCorrupt.
// onDrop may be nil.
func OpenSpool(dir string, maxBytes int64, onDrop func(reason string, bytes int64)) (*Spool, error) {
	if maxBytes <= 0 {
		maxBytes = DefaultBufferMaxBytes
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("buffer directory: %w", err)
	}
	s := &Spool{dir: dir, maxBytes: maxBytes, onDrop: onDrop, next: 1, ready: make(chan struct{}, 1)}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("buffer directory: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".tmp-") {
			os.Remove(filepath.Join(dir, name))
			continue
		}
		seq, ok := parseSpoolName(name)
		if !ok || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue
		}
		if data, err := os.ReadFile(filepath.Join(dir, name)); err == nil && !json.Valid(data) {
			s.drop(spoolFile{seq: seq, size: info.Size()}, DropCorrupt)
			continue
		}
		s.files = append(s.files, spoolFile{seq: seq, size: info.Size()})
		s.total += info.Size()
		s.next = max(s.next, seq+1)
	}
	sort.Slice(s.files, func(i, j int) bool { return s.files[i].seq < s.files[j].seq })
	s.trim()
	if len(s.files) > 0 {
		s.ready <- struct{}{}
	}
	return s, nil
}

func parseSpoolName(name string) (uint64, bool) {
	base, ok := strings.CutSuffix(name, spoolSuffix)
	if !ok || len(base) != 20 {
		return 0, false
	}
	n, err := strconv.ParseUint(base, 10, 64)
	return n, err == nil
}

func (s *Spool) path(seq uint64) string {
	return filepath.Join(s.dir, fmt.Sprintf("%020d%s", seq, spoolSuffix))
}

// Put stores one batch durably.
func (s *Spool) Put(data []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	seq := s.next
	s.next++
	tmp, err := os.CreateTemp(s.dir, ".tmp-")
	if err != nil {
		return fmt.Errorf("buffer: %w", err)
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), s.path(seq))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("buffer: %w", err)
	}
	// Renamed into place: the batch is the spool's even when the directory
	// sync fails, and counts against the bound.
	s.files = append(s.files, spoolFile{seq: seq, size: int64(len(data))})
	s.total += int64(len(data))
	s.trim()
	if err := syncDir(s.dir); err != nil {
		return fmt.Errorf("buffer: %w", err)
	}
	select {
	case s.ready <- struct{}{}:
	default:
	}
	return nil
}

// trim deletes the oldest batches while over the bound; the newest batch
// is kept even when it alone is larger.
func (s *Spool) trim() {
	for s.total > s.maxBytes && len(s.files) > 1 {
		f := s.files[0]
		if err := os.Remove(s.path(f.seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return
		}
		s.files = s.files[1:]
		s.total -= f.size
		if s.onDrop != nil {
			s.onDrop(DropBufferFull, f.size)
		}
	}
}

// drop deletes batch f, which is not in s.files, and tells onDrop.
func (s *Spool) drop(f spoolFile, reason string) {
	if err := os.Remove(s.path(f.seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
		// Still there: ignored from now on (a name it will not reuse).
		s.next = max(s.next, f.seq+1)
	}
	if s.onDrop != nil {
		s.onDrop(reason, f.size)
	}
}

// Oldest returns the oldest batch, or ok false when the spool is empty.
func (s *Spool) Oldest() (seq uint64, data []byte, ok bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.files) > 0 {
		f := s.files[0]
		data, err := os.ReadFile(s.path(f.seq))
		if errors.Is(err, os.ErrNotExist) {
			// Removed behind our back: forget it.
			s.files = s.files[1:]
			s.total -= f.size
			continue
		}
		if err != nil {
			s.files[0].fails++
			if s.files[0].fails < maxReadFails {
				return 0, nil, false, fmt.Errorf("buffer: %w", err)
			}
			s.files = s.files[1:]
			s.total -= f.size
			s.drop(f, DropUnreadable)
			continue
		}
		s.files[0].fails = 0
		return f.seq, data, true, nil
	}
	return 0, nil, false, nil
}

// Remove deletes batch seq (sent, or refused for good).
func (s *Spool) Remove(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range s.files {
		if f.seq != seq {
			continue
		}
		if err := os.Remove(s.path(seq)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("buffer: %w", err)
		}
		s.files = append(s.files[:i], s.files[i+1:]...)
		s.total -= f.size
		return nil
	}
	return nil
}

// Len returns the number of batches and their bytes.
func (s *Spool) Len() (batches int, bytes int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.files), s.total
}

// Ready is signalled after a Put (and at open when batches wait).
func (s *Spool) Ready() <-chan struct{} { return s.ready }

// Writable checks that the directory still takes files.
func (s *Spool) Writable() error {
	f, err := os.CreateTemp(s.dir, ".tmp-probe-")
	if err != nil {
		return err
	}
	f.Close()
	return os.Remove(f.Name())
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
