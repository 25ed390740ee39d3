package evidence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"
)

// stT0 is the suite's reference time.
var stT0 = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func stAt(d time.Duration) time.Time { return stT0.Add(d) }

// storeSuite is the behaviour every Store has; open returns a Store on an
// empty database, closed when the test ends.
func storeSuite(t *testing.T, open func(t *testing.T) Store) {
	t.Run("Idempotent", func(t *testing.T) { stIdempotent(t, open(t)) })
	t.Run("Invalid", func(t *testing.T) { stInvalid(t, open(t)) })
	t.Run("BuildsByImageID", func(t *testing.T) { stBuildsByImageID(t, open(t)) })
	t.Run("BuildsByTag", func(t *testing.T) { stBuildsByTag(t, open(t)) })
	t.Run("Connections", func(t *testing.T) { stConnections(t, open(t)) })
	t.Run("AddrRoundTrip", func(t *testing.T) { stAddrRoundTrip(t, open(t)) })
	t.Run("Decisions", func(t *testing.T) { stDecisions(t, open(t)) })
	t.Run("Decision", func(t *testing.T) { stDecision(t, open(t)) })
	t.Run("AddDecisions", func(t *testing.T) { stAddDecisions(t, open(t)) })
	t.Run("PruneByAge", func(t *testing.T) { stPruneByAge(t, open(t)) })
	t.Run("PruneBySize", func(t *testing.T) { stPruneBySize(t, open(t)) })
	t.Run("ConcurrentAddReport", func(t *testing.T) { stConcurrentAddReport(t, open(t)) })
	t.Run("KeyedByNode", func(t *testing.T) { stKeyedByNode(t, open(t)) })
	t.Run("FairToNodes", func(t *testing.T) { stFairToNodes(t, open(t)) })
	t.Run("Reporter", func(t *testing.T) { stReporter(t, open(t)) })
}

// migrateSuite checks schema migrations; newDB returns a function that
// opens the same new, empty database each time it is called.
func migrateSuite(t *testing.T, newDB func(t *testing.T) func(ctx context.Context) (Store, error)) {
	t.Run("AppliedOnce", func(t *testing.T) {
		ctx := t.Context()
		open := newDB(t)
		s1, err := open(ctx)
		if err != nil {
			t.Fatalf("first open: %v", err)
		}
		if _, _, err := s1.AddReport(ctx, Report{Node: "n1", Connections: []Connection{stConn("a", "n1", stT0, "192.0.2.1")}}); err != nil {
			t.Fatal(err)
		}
		s1.Close()
		s2, err := open(ctx)
		if err != nil {
			t.Fatalf("second open of the same database: %v", err)
		}
		defer s2.Close()
		stCheckVersions(t, s2)
		cs, err := s2.Connections(ctx, "n1", stT0, stT0, 0)
		if err != nil || len(cs) != 1 {
			t.Errorf("after reopening, Connections = %d, %v; want the 1 stored before", len(cs), err)
		}
	})
	t.Run("ConcurrentOpen", func(t *testing.T) {
		ctx := t.Context()
		open := newDB(t)
		const n = 4
		stores := make([]Store, n)
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { stores[i], errs[i] = open(ctx) })
		}
		wg.Wait()
		for i := range n {
			if errs[i] != nil {
				t.Errorf("open %d of %d at once: %v", i, n, errs[i])
				continue
			}
			defer stores[i].Close()
		}
		for _, s := range stores {
			if s != nil {
				stCheckVersions(t, s)
				break
			}
		}
	})
}

func stCheckVersions(t *testing.T, s Store) {
	t.Helper()
	vs, err := s.(interface {
		schemaVersions(context.Context) ([]int, error)
	}).schemaVersions(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	var want []int
	for i := range len(sqliteMigrations(t)) {
		want = append(want, i+1)
	}
	if !slices.Equal(vs, want) {
		t.Errorf("schema_migrations versions = %v, want %v, each once", vs, want)
	}
}

func sqliteMigrations(t *testing.T) []migration {
	ms, err := loadMigrations(migrationFiles, "migrations/sqlite")
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func stConn(id, node string, tm time.Time, dest string) Connection {
	c := Connection{Source: "agent", EventID: id, Node: node, Time: tm, Process: "wget", PID: 4242,
		Cmdline: "wget -q http://" + dest + "/payload", ContainerID: "c0ffee", CgroupID: "/kubepods/x",
		DestPort: 8080, DestName: "payload.example"}
	if dest != "" {
		c.DestIP = netip.MustParseAddr(dest)
	}
	return c
}

func stBuild(id, image string, finished time.Time, tags ...string) Build {
	return Build{Source: "agent", EventID: id, Node: "node-1", Tool: "buildkit", ImageID: image, Tags: tags,
		Started: finished.Add(-30 * time.Second), Finished: finished, PIDs: []int{100, 101},
		ContainerIDs: []string{"ctr1"}, CgroupID: "/system.slice/buildkit", Steps: []string{"RUN make"}}
}

// same reports whether want and got are equal, showing both as JSON when
// they are not.
func stSame(t *testing.T, what string, got, want any) {
	t.Helper()
	g, _ := json.MarshalIndent(got, "", "  ")
	w, _ := json.MarshalIndent(want, "", "  ")
	if string(g) != string(w) {
		t.Errorf("%s =\n%s\nwant\n%s", what, g, w)
	}
}

func stAdd(t *testing.T, s Store, r Report) (int, int) {
	t.Helper()
	b, c, err := s.AddReport(t.Context(), r)
	if err != nil {
		t.Fatalf("AddReport: %v", err)
	}
	return b, c
}

func stIdempotent(t *testing.T, s Store) {
	r1 := Report{Node: "node-1", Sensor: "ebpf",
		Builds:      []Build{stBuild("b1", "sha256:aa", stAt(0), "r/a:1"), stBuild("b2", "sha256:bb", stAt(time.Minute))},
		Connections: []Connection{stConn("c1", "node-1", stAt(0), "192.0.2.1"), stConn("c2", "node-1", stAt(time.Second), "192.0.2.2"), stConn("c3", "node-1", stAt(2*time.Second), "")},
	}
	r2 := Report{Node: "node-1",
		Builds:      []Build{r1.Builds[0], stBuild("b3", "sha256:cc", stAt(2*time.Minute))},
		Connections: []Connection{r1.Connections[2], stConn("c4", "node-1", stAt(3*time.Second), "192.0.2.4"), stConn("c4", "node-1", stAt(3*time.Second), "192.0.2.4")},
	}
	other := r1.Connections[0]
	other.Source = "falco" // same EventID, another source: a different item
	for _, tc := range []struct {
		name          string
		r             Report
		builds, conns int
	}{
		{"first", r1, 2, 3},
		{"retried", r1, 0, 0},
		{"half new, a duplicate within", r2, 1, 1},
		{"same EventID from another Source", Report{Connections: []Connection{other}}, 0, 1},
		{"empty", Report{Node: "node-1"}, 0, 0},
	} {
		b, c := stAdd(t, s, tc.r)
		if b != tc.builds || c != tc.conns {
			t.Errorf("%s: AddReport = %d builds, %d connections; want %d, %d", tc.name, b, c, tc.builds, tc.conns)
		}
	}
	cs, err := s.Connections(t.Context(), "node-1", stAt(-time.Hour), stAt(time.Hour), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 5 {
		t.Errorf("Connections returned %d, want 5 (4 agent, 1 falco)", len(cs))
	}
}

func stInvalid(t *testing.T, s Store) {
	good := stConn("ok", "n", stT0, "192.0.2.1")
	bad := func(f func(*Connection)) Connection { c := good; c.EventID = "bad"; f(&c); return c }
	badBuild := func(f func(*Build)) Build { b := stBuild("bad", "sha256:aa", stT0); f(&b); return b }
	for _, tc := range []struct {
		name        string
		r           Report
		item, field string
		index       int
	}{
		{"no EventID", Report{Connections: []Connection{good, bad(func(c *Connection) { c.EventID = "" })}}, "connection", "EventID", 1},
		{"no Source", Report{Connections: []Connection{bad(func(c *Connection) { c.Source = "" })}}, "connection", "Source", 0},
		{"no node anywhere", Report{Connections: []Connection{bad(func(c *Connection) { c.Node = "" })}}, "connection", "Node", 0},
		{"no time", Report{Connections: []Connection{bad(func(c *Connection) { c.Time = time.Time{} })}}, "connection", "Time", 0},
		{"NUL byte", Report{Connections: []Connection{bad(func(c *Connection) { c.Cmdline = "sh\x00-c" })}}, "connection", "Cmdline", 0},
		{"bad UTF-8", Report{Connections: []Connection{bad(func(c *Connection) { c.Process = "\xff" })}}, "connection", "Process", 0},
		{"port", Report{Connections: []Connection{bad(func(c *Connection) { c.DestPort = 70000 })}}, "connection", "DestPort", 0},
		{"zone", Report{Connections: []Connection{bad(func(c *Connection) { c.DestIP = netip.MustParseAddr("fe80::1%eth0") })}}, "connection", "DestIP", 0},
		{"build without EventID", Report{Node: "n", Connections: []Connection{good}, Builds: []Build{badBuild(func(b *Build) { b.EventID = "" })}}, "build", "EventID", 0},
		{"empty tag", Report{Builds: []Build{badBuild(func(b *Build) { b.Tags = []string{"r/a:1", ""} })}}, "build", "Tags", 0},
		{"negative PID", Report{Builds: []Build{badBuild(func(b *Build) { b.PIDs = []int{-1} })}}, "build", "PIDs", 0},
	} {
		_, _, err := s.AddReport(t.Context(), tc.r)
		var ie *InvalidError
		if !errors.As(err, &ie) {
			t.Errorf("%s: AddReport error = %v, want an *InvalidError", tc.name, err)
			continue
		}
		if ie.Item != tc.item || ie.Field != tc.field || ie.Index != tc.index {
			t.Errorf("%s: AddReport error = %+v, want item %s %d field %s", tc.name, ie, tc.item, tc.index, tc.field)
		}
	}
	// Nothing of a refused report is stored, the good items included.
	if b, c := stAdd(t, s, Report{Connections: []Connection{good}}); c != 1 || b != 0 {
		t.Errorf("after refused reports, AddReport(good) = %d, %d; want 0, 1 (it was not stored before)", b, c)
	}
	// A decision is checked too.
	err := s.AddDecision(t.Context(), Decision{ID: "d", Time: stT0, Images: json.RawMessage(`[{"image":`)})
	var ie *InvalidError
	if !errors.As(err, &ie) || ie.Field != "Images" {
		t.Errorf("AddDecision(bad JSON) = %v, want an *InvalidError about Images", err)
	}
}

func stBuildsByImageID(t *testing.T, s Store) {
	full := Build{Source: "docker", EventID: "e1", Tool: "docker", ImageID: "sha256:aa",
		Tags: []string{"reg.example/shop:1.4", "reg.example/shop:latest"}, Started: stAt(-time.Minute).Add(1500 * time.Nanosecond),
		Finished: stAt(0), PIDs: []int{1, 2, 3}, ContainerIDs: []string{"x", "y"}, CgroupID: "cg", Steps: []string{"FROM x", "RUN y"}}
	sparse := Build{Source: "docker", EventID: "e2", Node: "node-2", ImageID: "sha256:aa", Started: stAt(time.Hour)}
	older := stBuild("e3", "sha256:aa", stAt(-time.Hour))
	stAdd(t, s, Report{Node: "node-1", Builds: []Build{full, sparse, older, stBuild("e4", "sha256:bb", stAt(0))}})

	wantFull := full
	wantFull.Node = "node-1" // from the report
	wantFull.Started = wantFull.Started.Truncate(time.Microsecond)
	for _, tc := range []struct {
		image string
		want  []Build
	}{
		// Newest first: sparse's only time is Started, an hour after stT0.
		{"sha256:aa", []Build{sparse, wantFull, older}},
		{"sha256:cc", nil},
		{"", nil},
	} {
		got, err := s.BuildsByImageID(t.Context(), tc.image)
		if err != nil {
			t.Fatal(err)
		}
		stSame(t, fmt.Sprintf("BuildsByImageID(%q)", tc.image), got, tc.want)
	}
	got, _ := s.BuildsByImageID(t.Context(), "sha256:aa")
	if len(got) > 0 && got[0].Started.Location() != time.UTC {
		t.Errorf("Started is in %v, want UTC", got[0].Started.Location())
	}
}

func stBuildsByTag(t *testing.T, s Store) {
	var bs []Build
	for i := range 5 {
		bs = append(bs, stBuild(fmt.Sprint("b", i), fmt.Sprintf("sha256:%02d", i), stAt(time.Duration(i)*time.Minute), "r/app:1", fmt.Sprint("r/app:", i)))
	}
	// Listed twice: one tag row. Another node's: it comes second, after
	// node-1's newest (node-fair order).
	dup := stBuild("dup", "sha256:ff", stAt(-time.Hour), "r/app:1", "r/app:1")
	dup.Node = "node-2"
	bs = append(bs, dup)
	stAdd(t, s, Report{Node: "node-1", Builds: bs})
	ids := func(bs []Build) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.EventID)
		}
		return out
	}
	for _, tc := range []struct {
		tag   string
		limit int
		want  []string
	}{
		// At most MaxBuildsPerNode (4) of node-1: b0 is not returned.
		{"r/app:1", 0, []string{"b4", "dup", "b3", "b2", "b1"}},
		{"r/app:1", 2, []string{"b4", "dup"}},
		{"r/app:3", 10, []string{"b3"}},
		{"r/app", 10, nil},
		{"R/APP:1", 10, nil}, // exact match
	} {
		got, err := s.BuildsByTag(t.Context(), tc.tag, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("BuildsByTag(%q, %d) = %v, want %v", tc.tag, tc.limit, ids(got), tc.want)
		}
	}
	got, _ := s.BuildsByTag(t.Context(), "r/app:1", 1)
	stSame(t, "BuildsByTag(r/app:1, 1)", got, []Build{bs[4]})
}

func stConnections(t *testing.T, s Store) {
	var cs []Connection
	for i := range 10 {
		cs = append(cs, stConn(fmt.Sprint("c", i), "node-1", stAt(time.Duration(i)*time.Second), "192.0.2.1"))
	}
	cs = append(cs, stConn("other", "node-2", stAt(time.Second), "192.0.2.1"))
	// Same time as c5: ordered by arrival after it.
	cs = append(cs, stConn("c5b", "node-1", stAt(5*time.Second), "192.0.2.1"))
	// Sub-microsecond: stored as stT0+7s+1µs.
	cs = append(cs, stConn("sub", "node-1", stAt(7*time.Second+1500*time.Nanosecond), "192.0.2.1"))
	stAdd(t, s, Report{Connections: cs})
	ids := func(cs []Connection) []string {
		var out []string
		for _, c := range cs {
			out = append(out, c.EventID)
		}
		return out
	}
	for _, tc := range []struct {
		name     string
		node     string
		from, to time.Time
		limit    int
		want     []string
	}{
		{"inclusive window", "node-1", stAt(2 * time.Second), stAt(5 * time.Second), 0, []string{"c2", "c3", "c4", "c5", "c5b"}},
		{"limit keeps the oldest", "node-1", stAt(0), stAt(time.Hour), 3, []string{"c0", "c1", "c2"}},
		{"one instant", "node-1", stAt(9 * time.Second), stAt(9 * time.Second), 0, []string{"c9"}},
		{"microseconds", "node-1", stAt(7*time.Second + time.Microsecond), stAt(7*time.Second + time.Microsecond), 0, []string{"sub"}},
		{"other node", "node-2", stAt(0), stAt(time.Hour), 0, []string{"other"}},
		{"before any", "node-1", stAt(-time.Hour), stAt(-time.Second), 0, nil},
		{"from after to", "node-1", stAt(5 * time.Second), stAt(2 * time.Second), 0, nil},
		{"unknown node", "node-9", stAt(0), stAt(time.Hour), 0, nil},
	} {
		got, err := s.Connections(t.Context(), tc.node, tc.from, tc.to, tc.limit)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ids(got), tc.want) {
			t.Errorf("%s: Connections(%s, +%v, +%v, %d) = %v, want %v", tc.name, tc.node, tc.from.Sub(stT0), tc.to.Sub(stT0), tc.limit, ids(got), tc.want)
		}
	}
	got, _ := s.Connections(t.Context(), "node-1", stAt(0), stAt(0), 1)
	stSame(t, "Connections(node-1, stT0, stT0)", got, []Connection{cs[0]})
}

func stAddrRoundTrip(t *testing.T, s Store) {
	for i, tc := range []string{"192.0.2.7", "10.0.0.1", "2001:db8::1", "::1", "::ffff:192.0.2.7", "fe80::1", "0.0.0.0", "::", ""} {
		c := stConn(fmt.Sprint("ip", i), "node-ip", stAt(time.Duration(i)*time.Second), tc)
		stAdd(t, s, Report{Connections: []Connection{c}})
		got, err := s.Connections(t.Context(), "node-ip", c.Time, c.Time, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].DestIP != c.DestIP {
			t.Errorf("DestIP %q stored and read back as %v", tc, got)
			continue
		}
		if tc != "" && (got[0].DestIP.Is4() != c.DestIP.Is4() || got[0].DestIP.String() != tc) {
			t.Errorf("DestIP %q read back as %q (Is4 %v)", tc, got[0].DestIP, got[0].DestIP.Is4())
		}
	}
}

// decisionFixture is a set of decisions for filter tests.
func stDecisionFixture() []Decision {
	img := func(refs ...string) json.RawMessage {
		var vs []map[string]any
		for _, r := range refs {
			name, digest, _ := strings.Cut(r, "@")
			v := map[string]any{"container": "app", "image": name, "verdict": "deny", "findings": []any{}}
			if digest != "" {
				v["digest"] = digest
			}
			vs = append(vs, v)
		}
		b, _ := json.Marshal(vs)
		return b
	}
	return []Decision{
		{ID: "d1", Time: stAt(0), Operation: "CREATE", Namespace: "shop", Kind: "Pod", Name: "hotfix", User: "alice",
			Groups: []string{"system:authenticated", "devs"}, Mode: "enforce", Verdict: "deny",
			Rules: []string{"fresh-image", "suspicious-build-step"}, Images: img("ghcr.io/acme/shop:1.4@sha256:f269"), Exceptions: nil},
		{ID: "d2", Time: stAt(time.Minute), Operation: "CREATE", Namespace: "audited", Kind: "Deployment", Name: "web",
			Mode: "audit", Verdict: "would-deny", Rules: []string{"fresh-image"}, Images: img("ghcr.io/acme/team/web:2", "nginx:1.25")},
		{ID: "d3", Time: stAt(2 * time.Minute), Operation: "UPDATE", Namespace: "shop", Kind: "Pod", Name: "ok",
			Mode: "enforce", Verdict: "allow", Images: img("Registry.Example/Shop_Cart:1")},
		{ID: "d4", Time: stAt(3 * time.Minute), Operation: "CREATE", Namespace: "shop", Kind: "Job", Name: "tool",
			Mode: "warn", Verdict: "warn", Rules: []string{"host-built"}, Images: img("registry.example/shopXcart:1"),
			Exceptions: []string{"bpe/tool-until-friday"}},
		{ID: "d5:audit-scan", Time: stAt(4 * time.Minute), Namespace: "kube-public", Kind: "Pod", Name: "x", Verdict: "would-deny",
			Rules: []string{"unresolvable-image"}},
	}
}

func stDecisions(t *testing.T, s Store) {
	for _, d := range stDecisionFixture() {
		if err := s.AddDecision(t.Context(), d); err != nil {
			t.Fatalf("AddDecision(%s): %v", d.ID, err)
		}
	}
	for _, tc := range []struct {
		name string
		q    DecisionQuery
		want []string
	}{
		{"all, newest first", DecisionQuery{}, []string{"d5:audit-scan", "d4", "d3", "d2", "d1"}},
		{"since is inclusive", DecisionQuery{Since: stAt(3 * time.Minute)}, []string{"d5:audit-scan", "d4"}},
		{"namespace", DecisionQuery{Namespace: "shop"}, []string{"d4", "d3", "d1"}},
		{"rule", DecisionQuery{Rule: "fresh-image"}, []string{"d2", "d1"}},
		{"verdicts", DecisionQuery{Verdicts: []string{"deny", "would-deny"}}, []string{"d5:audit-scan", "d2", "d1"}},
		{"glob crosses /", DecisionQuery{ImageGlob: "ghcr.io/acme/*"}, []string{"d2", "d1"}},
		{"glob exact", DecisionQuery{ImageGlob: "nginx:1.25"}, []string{"d2"}},
		{"glob without wildcard is whole", DecisionQuery{ImageGlob: "nginx"}, nil},
		{"glob ?", DecisionQuery{ImageGlob: "nginx:1.2?"}, []string{"d2"}},
		{"glob digest", DecisionQuery{ImageGlob: "sha256:f2*"}, []string{"d1"}},
		{"glob ignores case", DecisionQuery{ImageGlob: "registry.example/shop_cart:*"}, []string{"d3"}},
		{"glob _ is literal", DecisionQuery{ImageGlob: "*shop_cart*"}, []string{"d3"}},
		{"glob % is literal", DecisionQuery{ImageGlob: "%"}, nil},
		{"combined", DecisionQuery{Namespace: "shop", Verdicts: []string{"deny", "warn"}, Since: stAt(time.Second)}, []string{"d4"}},
		{"limit", DecisionQuery{Limit: 2}, []string{"d5:audit-scan", "d4"}},
		{"no match", DecisionQuery{Rule: "nope"}, nil},
	} {
		got, err := s.Decisions(t.Context(), tc.q)
		if err != nil {
			t.Fatalf("%s: Decisions: %v", tc.name, err)
		}
		var ids []string
		for _, d := range got {
			ids = append(ids, d.ID)
		}
		if !slices.Equal(ids, tc.want) {
			t.Errorf("%s: Decisions(%+v) = %v, want %v", tc.name, tc.q, ids, tc.want)
		}
	}
}

func stDecision(t *testing.T, s Store) {
	ds := stDecisionFixture()
	for _, d := range ds {
		if err := s.AddDecision(t.Context(), d); err != nil {
			t.Fatal(err)
		}
	}
	// Idempotent: a retried record with the ID changes nothing.
	again := ds[0]
	again.Verdict, again.Rules = "allow", []string{"other"}
	if err := s.AddDecision(t.Context(), again); err != nil {
		t.Fatalf("AddDecision again: %v", err)
	}
	for _, want := range ds {
		got, err := s.Decision(t.Context(), want.ID)
		if err != nil {
			t.Fatalf("Decision(%s): %v", want.ID, err)
		}
		stSame(t, "Decision("+want.ID+")", got, want)
		if want.Images != nil && string(got.Images) != string(want.Images) {
			t.Errorf("Decision(%s).Images = %s, want the bytes stored, %s", want.ID, got.Images, want.Images)
		}
	}
	if got, _ := s.Decisions(t.Context(), DecisionQuery{Rule: "other"}); len(got) != 0 {
		t.Errorf("a retried AddDecision indexed rule %q", "other")
	}
	_, err := s.Decision(t.Context(), "nope")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Decision(nope) error = %v, want ErrNotFound", err)
	}
}

// stAddDecisions: a batch is stored as the same decisions one by one
// would be, repeats (stored before, or twice in the batch) are left as
// they are, and an invalid decision stores nothing of its batch.
func stAddDecisions(t *testing.T, s Store) {
	ctx := t.Context()
	ds := stDecisionFixture()
	if err := s.AddDecision(ctx, ds[1]); err != nil {
		t.Fatal(err)
	}
	again := ds[1]
	again.Verdict, again.Rules = "allow", []string{"other"}
	twice := ds[3]
	twice.Verdict = "allow"
	bad := Decision{ID: "bad", Time: stT0, Name: "nul\x00"}
	err := s.AddDecisions(ctx, []Decision{ds[0], bad, ds[2]})
	var ie *InvalidError
	if !errors.As(err, &ie) || ie.Item != "decision" || ie.Index != 1 || ie.Field != "Name" {
		t.Fatalf("AddDecisions(with an invalid decision at 1) = %v, want an *InvalidError for decision 1, Name", err)
	}
	if _, err := s.Decision(ctx, ds[0].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("a refused batch stored %s: %v", ds[0].ID, err)
	}
	if err := s.AddDecisions(ctx, []Decision{ds[4], ds[3], again, ds[0], twice, ds[2]}); err != nil {
		t.Fatalf("AddDecisions: %v", err)
	}
	if err := s.AddDecisions(ctx, nil); err != nil {
		t.Errorf("AddDecisions(nil) = %v", err)
	}
	for _, want := range ds {
		got, err := s.Decision(ctx, want.ID)
		if err != nil {
			t.Fatalf("Decision(%s): %v", want.ID, err)
		}
		stSame(t, "Decision("+want.ID+")", got, want)
	}
	for _, tc := range []struct {
		q    DecisionQuery
		want []string
	}{
		{DecisionQuery{Rule: "fresh-image"}, []string{"d2", "d1"}},
		{DecisionQuery{Rule: "other"}, nil},
		{DecisionQuery{ImageGlob: "nginx:*"}, []string{"d2"}},
		{DecisionQuery{ImageGlob: "*shop*"}, []string{"d4", "d3", "d1"}},
	} {
		got, err := s.Decisions(ctx, tc.q)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, d := range got {
			ids = append(ids, d.ID)
		}
		if !slices.Equal(ids, tc.want) {
			t.Errorf("after AddDecisions, Decisions(%+v) = %v, want %v", tc.q, ids, tc.want)
		}
	}
}

func stPruneByAge(t *testing.T, s Store) {
	ctx := t.Context()
	stAdd(t, s, Report{Node: "n",
		Builds:      []Build{stBuild("old", "sha256:aa", stAt(-2*time.Hour), "r/a:1"), stBuild("new", "sha256:aa", stAt(0), "r/a:1")},
		Connections: []Connection{stConn("c1", "n", stAt(-2*time.Hour), ""), stConn("c2", "n", stAt(-time.Hour-time.Microsecond), ""), stConn("c3", "n", stAt(-time.Hour), "")},
	})
	ds := stDecisionFixture()
	ds[0].Time = stAt(-3 * time.Hour)
	for _, d := range ds {
		if err := s.AddDecision(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.Prune(ctx, stAt(-time.Hour), 0)
	if err != nil {
		t.Fatal(err)
	}
	if n != 4 {
		t.Errorf("Prune(stT0-1h, 0) = %d, want 4 (1 build, 2 connections, 1 decision)", n)
	}
	if bs, _ := s.BuildsByTag(ctx, "r/a:1", 0); len(bs) != 1 || bs[0].EventID != "new" {
		t.Errorf("after Prune, BuildsByTag = %v, want [new]: the tag of the old build went with it", bs)
	}
	if cs, _ := s.Connections(ctx, "n", stAt(-24*time.Hour), stT0, 0); len(cs) != 1 || cs[0].EventID != "c3" {
		t.Errorf("after Prune, Connections = %d, want c3 only (before is exclusive)", len(cs))
	}
	if _, err := s.Decision(ctx, ds[0].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("after Prune, Decision(%s) = %v, want ErrNotFound", ds[0].ID, err)
	}
	if got, _ := s.Decisions(ctx, DecisionQuery{Rule: "suspicious-build-step"}); len(got) != 0 {
		t.Errorf("after Prune, the pruned decision's rule still matches")
	}
	if n, err := s.Prune(ctx, stAt(-time.Hour), 0); n != 0 || err != nil {
		t.Errorf("Prune again = %d, %v; want 0", n, err)
	}
	// A pruned item reported again is new again: it is gone.
	if _, c := stAdd(t, s, Report{Connections: []Connection{stConn("c1", "n", stAt(-2*time.Hour), "")}}); c != 1 {
		t.Errorf("re-adding a pruned connection counted %d new, want 1", c)
	}
}

func stPruneBySize(t *testing.T, s Store) {
	ctx := t.Context()
	var cs []Connection
	for i := range 30 {
		cs = append(cs, stConn(fmt.Sprint("c", i), "n", stAt(time.Duration(i%10)*time.Second), ""))
	}
	var bs []Build
	for i := range 5 {
		bs = append(bs, stBuild(fmt.Sprint("b", i), "sha256:aa", stAt(time.Duration(i)*time.Minute), "r/a:1"))
	}
	stAdd(t, s, Report{Node: "n", Builds: bs, Connections: cs})
	for _, d := range stDecisionFixture() {
		s.AddDecision(ctx, d)
	}
	for _, tc := range []struct {
		maxRows, want int
	}{
		{0, 0},   // no cap
		{100, 0}, // under the cap
		{12, 18 + 0 + 0},
		{4, 8 + 1 + 1},
	} {
		n, err := s.Prune(ctx, time.Time{}, tc.maxRows)
		if err != nil {
			t.Fatal(err)
		}
		if n != tc.want {
			t.Errorf("Prune(zero, %d) = %d, want %d", tc.maxRows, n, tc.want)
		}
	}
	// The 4 newest by (time, arrival) stay: c9, c19 and c29 at 9s, and of
	// c8, c18 and c28 at 8s the last stored, c8 (a report's items are
	// stored in (Source, EventID) order).
	got, _ := s.Connections(ctx, "n", stAt(0), stAt(time.Hour), 0)
	var ids []string
	for _, c := range got {
		ids = append(ids, c.EventID)
	}
	if want := []string{"c8", "c19", "c29", "c9"}; !slices.Equal(ids, want) {
		t.Errorf("after Prune(zero, 4), Connections = %v, want %v", ids, want)
	}
	if bs, _ := s.BuildsByImageID(ctx, "sha256:aa"); len(bs) != 4 || bs[0].EventID != "b4" {
		t.Errorf("after Prune(zero, 4), builds = %d, want 4, newest b4", len(bs))
	}
	if ds, _ := s.Decisions(ctx, DecisionQuery{}); len(ds) != 4 || ds[3].ID != "d2" {
		t.Errorf("after Prune(zero, 4), %d decisions, want 4, oldest d2", len(ds))
	}
}

func stConcurrentAddReport(t *testing.T, s Store) {
	const (
		workers = 6
		reports = 15
	)
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		builds  int
		conns   int
		firstEr error
	)
	for w := range workers {
		wg.Go(func() {
			for r := range reports {
				// Half the items are shared by all workers.
				rep := Report{Node: fmt.Sprint("node-", w%2)}
				for i := range 4 {
					id := fmt.Sprintf("w%d-r%d-%d", w, r, i)
					if i%2 == 0 {
						id = fmt.Sprintf("shared-r%d-%d", r, i)
					}
					rep.Connections = append(rep.Connections, stConn(id, "node-x", stAt(time.Duration(r)*time.Second), "192.0.2.9"))
				}
				build := stBuild(fmt.Sprintf("shared-b%d", r), "sha256:cc", stAt(time.Duration(r)*time.Second), "r/c:1")
				build.Node = fmt.Sprint("builder-", r)
				rep.Builds = []Build{build}
				b, c, err := s.AddReport(t.Context(), rep)
				mu.Lock()
				builds += b
				conns += c
				if err != nil && firstEr == nil {
					firstEr = err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if firstEr != nil {
		t.Fatalf("AddReport: %v", firstEr)
	}
	wantConns := workers*reports*2 + reports*2
	if builds != reports || conns != wantConns {
		t.Errorf("concurrent AddReport counted %d builds, %d connections; want %d, %d", builds, conns, reports, wantConns)
	}
	cs, err := s.Connections(t.Context(), "node-x", stAt(-time.Hour), stAt(time.Hour), 10000)
	if err != nil || len(cs) != wantConns {
		t.Errorf("Connections = %d, %v; want %d", len(cs), err, wantConns)
	}
	if bs, _ := s.BuildsByTag(t.Context(), "r/c:1", 100); len(bs) != reports {
		t.Errorf("BuildsByTag = %d, want %d", len(bs), reports)
	}
}

// stKeyedByNode: an item is one node's. Another node's report of the
// same source and event ID is another item, and cannot take its place:
// the node agent's build IDs are predictable ("docker-build/<imageID>").
func stKeyedByNode(t *testing.T, s Store) {
	ctx := t.Context()
	forged := stBuild("docker-build/sha256:aa", "sha256:aa", stAt(time.Minute))
	forged.Node = "ci-runner-1"
	genuine := stBuild("docker-build/sha256:aa", "sha256:aa", stAt(0))
	genuine.Node = "worker-3"
	conn := stConn("ebpf/4242/1", "ci-runner-1", stAt(0), "192.0.2.1")
	for _, tc := range []struct {
		name          string
		r             Report
		builds, conns int
	}{
		{"one node takes an event ID first", Report{Node: "ci-runner-1", Builds: []Build{forged}, Connections: []Connection{conn}}, 1, 1},
		{"the node it belongs to still reports it", Report{Node: "worker-3", Builds: []Build{genuine},
			Connections: []Connection{stConn("ebpf/4242/1", "worker-3", stAt(0), "203.0.113.9")}}, 1, 1},
		{"a retry of either is a duplicate", Report{Node: "worker-3", Builds: []Build{genuine, forged}}, 0, 0},
	} {
		b, c := stAdd(t, s, tc.r)
		if b != tc.builds || c != tc.conns {
			t.Errorf("%s: AddReport = %d builds, %d connections; want %d, %d", tc.name, b, c, tc.builds, tc.conns)
		}
	}
	bs, err := s.BuildsByImageID(ctx, "sha256:aa")
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, b := range bs {
		nodes = append(nodes, b.Node)
	}
	if want := []string{"ci-runner-1", "worker-3"}; !slices.Equal(nodes, want) {
		t.Errorf("BuildsByImageID(sha256:aa) nodes = %v, want %v", nodes, want)
	}
	if bs, _ := s.BuildsByTag(ctx, "r/x:1", 0); len(bs) != 0 {
		t.Errorf("BuildsByTag of an unknown tag = %v", bs)
	}
	cs, err := s.Connections(ctx, "worker-3", stAt(-time.Minute), stAt(time.Minute), 0)
	if err != nil || len(cs) != 1 || cs[0].DestIP.String() != "203.0.113.9" {
		t.Errorf("worker-3's connections = %v, %v; want its own 203.0.113.9", cs, err)
	}
}

// stFairToNodes: one node reporting many builds of an image, newer than
// another node's, does not push the other node's out of the lookups that
// admission makes with a small limit.
func stFairToNodes(t *testing.T, s Store) {
	ctx := t.Context()
	genuine := stBuild("genuine", "sha256:aa", stAt(0), "r/app:1")
	genuine.Node = "worker-3"
	stAdd(t, s, Report{Node: "worker-3", Builds: []Build{genuine}})
	var flood []Build
	for i := range 3 * DefaultLimit / 2 {
		b := stBuild(fmt.Sprint("flood-", i), "sha256:aa", stAt(time.Duration(i+1)*time.Second), "r/app:1")
		b.Node = "ci-runner-1"
		flood = append(flood, b)
	}
	stAdd(t, s, Report{Node: "ci-runner-1", Builds: flood})
	other := stBuild("other", "sha256:aa", stAt(-time.Hour), "r/app:1")
	other.Node = "worker-4"
	stAdd(t, s, Report{Node: "worker-4", Builds: []Build{other}})

	firstOf := func(bs []Build) map[string]int {
		first := map[string]int{}
		for i, b := range bs {
			if _, ok := first[b.Node]; !ok {
				first[b.Node] = i
			}
		}
		return first
	}
	bs, err := s.BuildsByImageID(ctx, "sha256:aa")
	if err != nil {
		t.Fatal(err)
	}
	// Every node's newest build comes before any node's second.
	if first := firstOf(bs); len(first) != 3 || first["ci-runner-1"] != 0 || first["worker-3"] != 1 || first["worker-4"] != 2 {
		t.Errorf("BuildsByImageID: the first build of each node at %v (of %d), want ci-runner-1 0, worker-3 1, worker-4 2", first, len(bs))
	}
	if len(bs) > 3*MaxBuildsPerNode {
		t.Errorf("BuildsByImageID returned %d builds, want at most %d per node", len(bs), MaxBuildsPerNode)
	}
	tagged, err := s.BuildsByTag(ctx, "r/app:1", 3)
	if err != nil {
		t.Fatal(err)
	}
	if first := firstOf(tagged); len(tagged) != 3 || len(first) != 3 {
		t.Errorf("BuildsByTag(r/app:1, 3) = %d builds of nodes %v, want one of each of the 3 nodes", len(tagged), first)
	}
}

// stReporter: every item records who reported it.
func stReporter(t *testing.T, s Store) {
	ctx := t.Context()
	const agent, forwarder = "system:serviceaccount:buildguard-system:buildguard-node-agent", "system:serviceaccount:falco:falcosidekick"
	forwarded := stConn("f1", "node-1", stAt(time.Second), "192.0.2.2")
	forwarded.Reporter = forwarder
	stAdd(t, s, Report{Node: "node-1", Reporter: agent, Builds: []Build{stBuild("b1", "sha256:aa", stAt(0), "r/a:1")},
		Connections: []Connection{stConn("c1", "node-1", stAt(0), "192.0.2.1"), forwarded}})
	bs, err := s.BuildsByImageID(ctx, "sha256:aa")
	if err != nil || len(bs) != 1 || bs[0].Reporter != agent {
		t.Errorf("BuildsByImageID = %+v, %v; want one build reported by %s", bs, err, agent)
	}
	if bs, err := s.BuildsByTag(ctx, "r/a:1", 0); err != nil || len(bs) != 1 || bs[0].Reporter != agent {
		t.Errorf("BuildsByTag = %+v, %v; want one build reported by %s", bs, err, agent)
	}
	cs, err := s.Connections(ctx, "node-1", stAt(0), stAt(time.Second), 0)
	if err != nil || len(cs) != 2 || cs[0].Reporter != agent || cs[1].Reporter != forwarder {
		t.Errorf("Connections = %+v, %v; want c1 by the report's reporter, f1 by its own", cs, err)
	}
	if _, _, err := s.AddReport(ctx, Report{Node: "n", Reporter: "\xff", Connections: []Connection{stConn("c2", "n", stT0, "")}}); err == nil {
		t.Errorf("AddReport with a Reporter that is not UTF-8 succeeded")
	}
}

// Evidence stored by schema version 1, keyed by (source, event ID):
// builds 1 and 2 (the IDs a new database gives) with tags, one connection. migratedFrom1 checks a store
// opened on it.
const (
	v1BuildAt = 1795694400000000 // 2026-11-26T12:00:00Z in microseconds
	v1Seed    = `INSERT INTO builds (source, event_id, node, tool, image_id, started, finished, at, pids, tags) VALUES
	('agent', 'docker-build/sha256:aa', 'worker-3', 'docker', 'sha256:aa', %[1]s, %[1]s, %[1]s, '[48100]', '["r/app:1"]'),
	('docker', 'image/tag/sha256:bb', 'worker-4', 'docker', 'sha256:bb', %[1]s, %[1]s, %[1]s, NULL, '["r/app:2"]');
INSERT INTO build_tags (build_id, tag, at) VALUES (1, 'r/app:1', %[1]s), (2, 'r/app:2', %[1]s);
INSERT INTO connections (source, event_id, node, time, process, pid, dest_ip, dest_port) VALUES
	('agent', 'ebpf/48213/1', 'worker-3', %[1]s, 'wget', 48213, '203.0.113.9', 8080);`
)

func migratedFrom1(t *testing.T, s Store, count func(table string) int) {
	ctx := t.Context()
	at := time.UnixMicro(v1BuildAt).UTC()
	bs, err := s.BuildsByImageID(ctx, "sha256:aa")
	want := []Build{{Source: "agent", EventID: "docker-build/sha256:aa", Node: "worker-3", Tool: "docker", ImageID: "sha256:aa",
		Tags: []string{"r/app:1"}, Started: at, Finished: at, PIDs: []int{48100}}}
	if err != nil {
		t.Fatal(err)
	}
	stSame(t, "BuildsByImageID(sha256:aa) after the migration", bs, want)
	if bs, err := s.BuildsByTag(ctx, "r/app:2", 0); err != nil || len(bs) != 1 || bs[0].Node != "worker-4" {
		t.Errorf("BuildsByTag(r/app:2) after the migration = %+v, %v; want worker-4's build", bs, err)
	}
	if cs, err := s.Connections(ctx, "worker-3", at, at, 0); err != nil || len(cs) != 1 || cs[0].DestIP.String() != "203.0.113.9" {
		t.Errorf("Connections(worker-3) after the migration = %+v, %v", cs, err)
	}
	// The key is (node, source, event ID) now.
	forged := want[0]
	forged.Node, forged.Tags = "ci-runner-1", nil
	if b, _ := stAdd(t, s, Report{Node: "ci-runner-1", Builds: []Build{forged}}); b != 1 {
		t.Errorf("another node's build with a stored event ID: %d new, want 1", b)
	}
	if b, _ := stAdd(t, s, Report{Node: "worker-3", Builds: []Build{want[0]}}); b != 0 {
		t.Errorf("the stored build again: %d new, want 0", b)
	}
	if b, c := stAdd(t, s, Report{Node: "worker-3", Builds: []Build{stBuild("new", "sha256:cc", at, "r/app:1")},
		Connections: []Connection{stConn("new", "worker-3", at, "192.0.2.1")}}); b != 1 || c != 1 {
		t.Errorf("new items after the migration: %d, %d new; want 1, 1", b, c)
	}
	// Tags still go with their build.
	if _, err := s.Prune(ctx, at.Add(time.Hour), 0); err != nil {
		t.Fatal(err)
	}
	for _, table := range []string{"builds", "build_tags", "connections"} {
		if n := count(table); n != 0 {
			t.Errorf("after pruning everything, %s has %d rows", table, n)
		}
	}
}

func TestLoadMigrations(t *testing.T) {
	sql := &fstest.MapFile{Data: []byte("CREATE TABLE t (x int);")}
	for _, tc := range []struct {
		name    string
		files   fstest.MapFS
		want    []int
		wantErr string
	}{
		{"ordered", fstest.MapFS{"m/0002_b.sql": sql, "m/0001_a.sql": sql}, []int{1, 2}, ""},
		{"gap", fstest.MapFS{"m/0001_a.sql": sql, "m/0003_c.sql": sql}, nil, "want version 2"},
		{"duplicate", fstest.MapFS{"m/0001_a.sql": sql, "m/0001_b.sql": sql}, nil, "want version 2"},
		{"bad name", fstest.MapFS{"m/1_a.sql": sql}, nil, "not a migration"},
		{"none", fstest.MapFS{"m": &fstest.MapFile{Mode: fs.ModeDir}}, nil, "no migrations"},
	} {
		ms, err := loadMigrations(tc.files, "m")
		var got []int
		for _, m := range ms {
			got = append(got, m.version)
		}
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: loadMigrations error = %v, want one containing %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: loadMigrations = %v, %v; want %v", tc.name, got, err, tc.want)
		}
	}
	// Both backends have the same versions.
	pg, err := loadMigrations(migrationFiles, "migrations/postgres")
	if err != nil {
		t.Fatal(err)
	}
	sl := sqliteMigrations(t)
	if len(pg) != len(sl) {
		t.Fatalf("%d PostgreSQL migrations, %d SQLite ones; want the same", len(pg), len(sl))
	}
	for i := range pg {
		if pg[i].name != sl[i].name {
			t.Errorf("migration %d is %q on PostgreSQL, %q on SQLite", i+1, pg[i].name, sl[i].name)
		}
	}
}

func TestLikePattern(t *testing.T) {
	for _, tc := range []struct{ glob, want string }{
		{"ghcr.io/acme/*", "ghcr.io/acme/%"},
		{"Nginx:1.2?", "nginx:1.2_"},
		{`a_b%c\d`, `a\_b\%c\\d`},
	} {
		if got := likePattern(tc.glob); got != tc.want {
			t.Errorf("likePattern(%q) = %q, want %q", tc.glob, got, tc.want)
		}
	}
}
