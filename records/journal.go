package records

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"buildguard.dev/buildguard/evidence"
)

// journal is an append-only file of decisions, one JSON object a line,
// fsynced before append returns. Replaying it first renames it to
// path+".replay", so that appends go on into a fresh file while the old
// one is written to the store; the .replay file is removed only once every
// line of it is stored.
type journal struct {
	path string
	max  int64

	mu       sync.Mutex
	f        *os.File
	size     int64
	unsynced bool // spill wrote lines that no fsync has covered yet
}

// maxLine bounds one journal line when reading; an AdmissionReview body is
// at most webhook.DefaultMaxBodyBytes, and a record is much smaller.
const maxLine = 16 << 20

var errJournalFull = errors.New("journal full")

func openJournal(path string, max int64) (*journal, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("decision journal: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("decision journal: %w", err)
	}
	// The file's name must outlast a power loss as its fsynced lines do.
	syncDir(filepath.Dir(path))
	size, err := endLine(f, path)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("decision journal: %w", err)
	}
	return &journal{path: path, max: max, f: f, size: size}, nil
}

// endLine ends a torn last line (a write cut short by a crash) of the
// journal f at path, so that the next record appended is a line of its
// own rather than the unreadable end of the torn one, and returns the
// file's size.
func endLine(f *os.File, path string) (int64, error) {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return 0, err
	}
	r, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer r.Close()
	last := make([]byte, 1)
	if _, err := r.ReadAt(last, st.Size()-1); err != nil {
		return 0, err
	}
	if last[0] == '\n' {
		return st.Size(), nil
	}
	if _, err := f.Write([]byte{'\n'}); err != nil {
		return 0, err
	}
	return st.Size() + 1, f.Sync()
}

func (j *journal) replayPath() string { return j.path + ".replay" }

// append writes ds and fsyncs once. It writes nothing and returns
// errJournalFull when they would take the journal past its maximum size.
func (j *journal) append(ds ...evidence.Decision) error { return j.write(true, ds) }

// spill writes ds like append but leaves the fsync to syncSpilled: the
// records the admission path spills when the writer's queue is full are
// the asynchronous ones (allows), and an fsync each, under the journal's
// lock, on the request's goroutine, is what a saturated store made every
// review wait for. Written, they outlive a kill of the process already.
func (j *journal) spill(ds ...evidence.Decision) error { return j.write(false, ds) }

// syncSpilled fsyncs what spill wrote since the last fsync, if anything.
func (j *journal) syncSpilled() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil || !j.unsynced {
		return nil
	}
	j.unsynced = false
	return j.f.Sync()
}

func (j *journal) write(sync bool, ds []evidence.Decision) error {
	var buf []byte
	for _, d := range ds {
		b, err := json.Marshal(d)
		if err != nil {
			return err
		}
		buf = append(append(buf, b...), '\n')
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return os.ErrClosed
	}
	if j.max > 0 && j.size+int64(len(buf)) > j.max {
		return errJournalFull
	}
	n, err := j.f.Write(buf)
	j.size += int64(n)
	if err != nil {
		return err
	}
	if !sync {
		j.unsynced = true
		return nil
	}
	j.unsynced = false
	return j.f.Sync()
}

// pending reports whether there is anything to replay.
func (j *journal) pending() bool {
	return j.bytes() > 0 || j.replaying()
}

// bytes is the size of the journal file appends go to.
func (j *journal) bytes() int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.size
}

// depth is the bytes waiting for the store: the journal's and those of a
// .replay file being replayed.
func (j *journal) depth() int64 {
	n := j.bytes()
	if fi, err := os.Stat(j.replayPath()); err == nil {
		n += fi.Size()
	}
	return n
}

// replaying reports whether a .replay file is left to store.
func (j *journal) replaying() bool {
	_, err := os.Stat(j.replayPath())
	return err == nil
}

// take returns the path of a file to replay: the .replay file left by an
// earlier attempt, else the journal itself, renamed to it; "" when there
// is nothing to replay.
func (j *journal) take() (string, error) {
	rp := j.replayPath()
	if _, err := os.Stat(rp); err == nil {
		return rp, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.size == 0 || j.f == nil {
		return "", nil
	}
	if err := os.Rename(j.path, rp); err != nil {
		return "", err
	}
	// Appends go to a new file from now on; the old descriptor points at
	// the renamed one.
	f, err := os.OpenFile(j.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		// Keep appending to the renamed file rather than lose records;
		// the next take replays it.
		return "", err
	}
	if j.unsynced {
		j.f.Sync() // the renamed file's spilled lines, before its descriptor goes
	}
	j.f.Close()
	j.f, j.size, j.unsynced = f, 0, false
	syncDir(filepath.Dir(j.path))
	return rp, nil
}

// read calls fn for each decision in the file at path, in order, and
// stops at fn's first error. Lines that do not parse (a write torn by a
// crash) are counted in bad and skipped.
func readJournal(path string, fn func(evidence.Decision) error) (bad int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		var d evidence.Decision
		if json.Unmarshal(sc.Bytes(), &d) != nil {
			bad++
			continue
		}
		if err := fn(d); err != nil {
			return bad, err
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return bad + 1, nil // the rest of the file is one torn line
		}
		return bad, err
	}
	return bad, nil
}

func (j *journal) close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.f == nil {
		return nil
	}
	var err error
	if j.unsynced {
		err = j.f.Sync()
	}
	err = errors.Join(err, j.f.Close())
	j.f = nil
	return err
}

// syncDir makes a rename in dir durable; best effort.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
