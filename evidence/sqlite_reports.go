package evidence

import (
	"context"
	"errors"
	"sync"
)

// Group commit of reports on SQLite. A commit costs one fsync of the WAL
// (synchronous=FULL), a few milliseconds on a busy disk, and SQLite has
// one writer: one transaction per report capped a fleet at a few hundred
// reports a second, however many arrived at once. Reports that arrive
// while a transaction commits wait and go together in the next one, each
// answered when that transaction is durable. A lone report does not wait:
// the writer takes what is there as soon as the last commit ends.
const (
	// groupMaxReports and groupMaxItems bound one transaction, so that a
	// report does not wait behind an unbounded batch; a report larger
	// than groupMaxItems goes alone.
	groupMaxReports = 256
	groupMaxItems   = 20000
)

// pendingReport is a report waiting for the writer.
type pendingReport struct {
	p             prepared
	builds, conns int
	err           error
	done          chan struct{}
}

// reportWriter commits the reports of AddReport in groups, from one
// goroutine.
type reportWriter struct {
	commit func(ctx context.Context, ps []*pendingReport) error // one transaction; sets each report's counts

	mu      sync.Mutex
	queue   []*pendingReport
	wake    chan struct{} // capacity 1: the writer has something to do
	closed  bool
	stopped chan struct{}
}

func newReportWriter(commit func(ctx context.Context, ps []*pendingReport) error) *reportWriter {
	w := &reportWriter{commit: commit, wake: make(chan struct{}, 1), stopped: make(chan struct{})}
	go w.run()
	return w
}

var errClosed = errors.New("store closed")

// add queues p and waits until it is committed or failed, or ctx ends. A
// report whose caller stopped waiting may still be committed: a retry of
// it is then a duplicate, not a loss.
func (w *reportWriter) add(ctx context.Context, p prepared) (builds, conns int, err error) {
	pr := &pendingReport{p: p, done: make(chan struct{})}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return 0, 0, errClosed
	}
	w.queue = append(w.queue, pr)
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	select {
	case <-pr.done:
		return pr.builds, pr.conns, pr.err
	case <-ctx.Done():
		return 0, 0, ctx.Err()
	}
}

// take removes the next group from the queue.
func (w *reportWriter) take() []*pendingReport {
	w.mu.Lock()
	defer w.mu.Unlock()
	n, items := 0, 0
	for n < len(w.queue) && n < groupMaxReports {
		k := len(w.queue[n].p.builds) + len(w.queue[n].p.conns)
		if n > 0 && items+k > groupMaxItems {
			break
		}
		items += k
		n++
	}
	group := w.queue[:n:n]
	w.queue = w.queue[n:]
	if len(w.queue) == 0 {
		w.queue = nil
	}
	return group
}

func (w *reportWriter) run() {
	defer close(w.stopped)
	for {
		group := w.take()
		if len(group) == 0 {
			w.mu.Lock()
			closed := w.closed && len(w.queue) == 0
			w.mu.Unlock()
			if closed {
				return
			}
			<-w.wake
			continue
		}
		// Not a caller's context: the group is theirs together.
		err := w.commit(context.Background(), group)
		if err != nil && len(group) > 1 {
			// Whatever failed, each report on its own: one report's
			// trouble must not cost the others.
			for _, pr := range group {
				pr.builds, pr.conns = 0, 0
				pr.err = w.commit(context.Background(), []*pendingReport{pr})
			}
		} else {
			for _, pr := range group {
				pr.err = err
			}
		}
		for _, pr := range group {
			if pr.err != nil {
				pr.builds, pr.conns = 0, 0
			}
			close(pr.done)
		}
	}
}

// close commits what is queued and stops the writer.
func (w *reportWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	<-w.stopped
}
