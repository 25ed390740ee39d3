package evidence

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"
)

// groupLog is a commit function for reportWriter that records the groups
// it was given, fails groups holding a report of node "bad", and holds
// its first commit until release is closed.
type groupLog struct {
	mu      sync.Mutex
	groups  [][]string // the nodes of each group
	started chan struct{}
	release chan struct{}
	once    sync.Once
}

func (g *groupLog) commit(_ context.Context, ps []*pendingReport) error {
	g.once.Do(func() {
		close(g.started)
		<-g.release
	})
	var nodes []string
	for _, pr := range ps {
		nodes = append(nodes, pr.p.conns[0].Node)
	}
	g.mu.Lock()
	g.groups = append(g.groups, nodes)
	g.mu.Unlock()
	if slices.Contains(nodes, "bad") {
		return errors.New("disk on fire")
	}
	for _, pr := range ps {
		pr.conns = len(pr.p.conns)
	}
	return nil
}

func onePrepared(node string) prepared {
	return prepared{conns: []Connection{stConn("c", node, stT0, "192.0.2.1")}}
}

// TestReportWriterGroups: reports that arrive while a commit runs go
// together in the next; a group that fails is retried report by report,
// so that only the bad one fails.
func TestReportWriterGroups(t *testing.T) {
	g := &groupLog{started: make(chan struct{}), release: make(chan struct{})}
	w := newReportWriter(g.commit)
	ctx := t.Context()
	type answer struct {
		node  string
		conns int
		err   error
	}
	answers := make(chan answer, 10)
	add := func(node string) {
		_, c, err := w.add(ctx, onePrepared(node))
		answers <- answer{node, c, err}
	}
	go add("first")
	<-g.started // the first commit holds the writer
	nodes := []string{"n1", "n2", "bad", "n3"}
	for _, n := range nodes {
		go add(n)
	}
	// Let them queue behind the held commit.
	for deadline := time.Now().Add(10 * time.Second); ; {
		w.mu.Lock()
		queued := len(w.queue)
		w.mu.Unlock()
		if queued == len(nodes) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d reports queued, want %d", queued, len(nodes))
		}
		time.Sleep(time.Millisecond)
	}
	close(g.release)
	got := map[string]answer{}
	for range len(nodes) + 1 {
		a := <-answers
		got[a.node] = a
	}
	w.close()
	for _, n := range []string{"first", "n1", "n2", "n3"} {
		if a := got[n]; a.err != nil || a.conns != 1 {
			t.Errorf("report of %s = %d, %v; want 1 connection stored", n, a.conns, a.err)
		}
	}
	if a := got["bad"]; a.err == nil || a.conns != 0 {
		t.Errorf("report of bad = %d, %v; want an error and nothing counted", a.conns, a.err)
	}
	// first alone; the four queued together; then each alone.
	if len(g.groups) != 6 || len(g.groups[1]) != 4 {
		t.Errorf("groups = %v, want [first], the 4 queued together, then each of them alone", g.groups)
	}
	if _, _, err := w.add(ctx, onePrepared("late")); !errors.Is(err, errClosed) {
		t.Errorf("add after close = %v, want errClosed", err)
	}
}

// TestReportWriterBounds: a group holds at most groupMaxReports reports
// and groupMaxItems items, but a larger report still goes, alone.
func TestReportWriterBounds(t *testing.T) {
	w := &reportWriter{}
	big := prepared{conns: make([]Connection, groupMaxItems+1)}
	for i := range 2*groupMaxReports + 1 {
		w.queue = append(w.queue, &pendingReport{p: onePrepared(fmt.Sprint(i))})
	}
	w.queue = append(w.queue, &pendingReport{p: big}, &pendingReport{p: onePrepared("after")})
	var sizes []int
	for g := w.take(); len(g) > 0; g = w.take() {
		sizes = append(sizes, len(g))
	}
	if want := []int{groupMaxReports, groupMaxReports, 1, 1, 1}; !slices.Equal(sizes, want) {
		t.Errorf("group sizes = %v, want %v", sizes, want)
	}
}
