package ingest_test

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/ingest"
)

// poster posts to a handler as a reporter would.
type poster struct{ h http.Handler }

func (p poster) post(path, token, body string) (int, string) {
	r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(body))
	if token != "" {
		r.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	p.h.ServeHTTP(w, r)
	return w.Code, w.Body.String()
}

// nodeReport is a NodeReport of node with one build of image n and the
// connections conns.
func nodeReport(node, buildID string, n int, conns ...string) string {
	now := time.Now().UTC().Truncate(time.Second)
	return fmt.Sprintf(`{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":%q,"sensor":"ebpf",
"builds":[{"eventID":%q,"tool":"docker","imageID":"sha256:%064x","tags":["localhost:5000/e2e/x:1"],"started":%q,"finished":%q}],
"connections":[%s]}`, node, buildID, n, now.Add(-time.Minute).Format(time.RFC3339), now.Format(time.RFC3339), strings.Join(conns, ","))
}

func connection(id, ip string) string {
	now := time.Now().UTC().Truncate(time.Second)
	return fmt.Sprintf(`{"eventID":%q,"time":%q,"process":"wget","pid":42,"cmdline":"wget http://%s/p","destIP":%q,"destPort":8080}`,
		id, now.Add(-30*time.Second).Format(time.RFC3339), ip, ip)
}

// TestHandler authenticates reporters with TokenReview against a real
// kube-apiserver and stores reports in a real SQLite store.
func TestHandler(t *testing.T) {
	env := sharedEnv(t)
	store := openStore(t)
	reg := prometheus.NewRegistry()
	metrics, err := ingest.NewMetrics(reg, ingest.Formats())
	if err != nil {
		t.Fatal(err)
	}
	h := &ingest.Handler{Store: store, Auth: env.reviewer(t, nil), Formats: ingest.Formats(), MaxBodyBytes: 64 << 10, Burst: 1000, Metrics: metrics}
	p := poster{h}
	ctx := t.Context()
	// counts reads buildguard_node_reports_total as format/code → count.
	counts := func() map[string]float64 {
		mfs, err := reg.Gather()
		if err != nil || len(mfs) != 1 {
			t.Fatalf("gathered %v (%v), want buildguard_node_reports_total", mfs, err)
		}
		out := map[string]float64{}
		for _, m := range mfs[0].GetMetric() {
			var f, c string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "format":
					f = l.GetValue()
				case "code":
					c = l.GetValue()
				}
			}
			out[f+"/"+c] = m.GetCounter().GetValue()
		}
		return out
	}
	if got, want := counts(), map[string]float64{"buildguard/200": 0, "falco/200": 0, "tetragon/200": 0, "docker/200": 0}; !maps.Equal(got, want) {
		t.Errorf("before any report: %v, want %v", got, want)
	}
	now := time.Now().UTC().Truncate(time.Second)

	tests := []struct {
		name     string
		path     string
		token    string
		body     string
		wantCode int
		want     string
	}{
		{"no token", "/v1/node-reports", "", nodeReport("worker-1", "b-1", 1), 401, "missing bearer token"},
		{"not a JWT", "/v1/node-reports", "not-a-token", nodeReport("worker-1", "b-1", 1), 401, "not authenticated"},
		{"garbage JWT", "/v1/node-reports", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", nodeReport("worker-1", "b-1", 1), 401, "not authenticated"},
		{"wrong audience", "/v1/node-reports", env.wrongAudience, nodeReport("worker-1", "b-1", 1), 401, "not authenticated"},
		{"service account not allowed", "/v1/node-reports", env.intruderToken, nodeReport("worker-1", "b-1", 1), 403, "buildguard-system:intruder may not report"},
		{"accepted", "/v1/node-reports", env.bound7, nodeReport("worker-7", "b-1", 1, connection("c-1", "203.0.113.9")), 200, `"accepted":{"builds":1,"connections":1},"duplicates":0`},
		{"retried batch is not counted twice", "/v1/node-reports", env.bound7, nodeReport("worker-7", "b-1", 1, connection("c-1", "203.0.113.9")), 200, `"accepted":{"builds":0,"connections":0},"duplicates":2`},
		{"a bad item does not drop the good ones", "/v1/node-reports", env.bound7, nodeReport("worker-7", "b-1", 1, connection("c-2", "203.0.113.10"), connection("c-3", "999.1.1.1")), 200, `"connections":1`},
		{"unknown format path", "/v1/node-reports/syslog", env.bound7, "{}", 404, "no report format"},
		{"not JSON", "/v1/node-reports", env.bound7, "<xml/>", 400, ""},
		{"oversized", "/v1/node-reports", env.bound7, `{"x":"` + strings.Repeat("a", 70<<10) + `"}`, 413, "body larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, body := p.post(tt.path, tt.token, tt.body)
			if code != tt.wantCode || !strings.Contains(body, tt.want) {
				t.Errorf("POST %s = %d %s, want %d containing %q", tt.path, code, body, tt.wantCode, tt.want)
			}
		})
	}
	want := map[string]float64{"buildguard/200": 3, "buildguard/401": 4, "buildguard/403": 1, "buildguard/400": 1, "buildguard/413": 1,
		"none/404": 1, "falco/200": 0, "tetragon/200": 0, "docker/200": 0}
	if got := counts(); !maps.Equal(got, want) {
		t.Errorf("buildguard_node_reports_total %v, want %v", got, want)
	}

	t.Run("the token's node wins over the body's", func(t *testing.T) {
		code, body := p.post("/v1/node-reports", env.bound7, nodeReport("laptop-claims-innocence", "b-9", 9, connection("c-9", "203.0.113.77")))
		if code != 200 || !strings.Contains(body, `"node":"worker-7"`) {
			t.Fatalf("POST = %d %s, want the report taken as worker-7's", code, body)
		}
		cs, err := store.Connections(ctx, "worker-7", now.Add(-time.Hour), now.Add(time.Hour), 10)
		if err != nil || !slices.ContainsFunc(cs, func(c evidence.Connection) bool { return c.DestIP.String() == "203.0.113.77" }) {
			t.Errorf("worker-7's connections = %+v, %v; want 203.0.113.77 among them", cs, err)
		}
		if cs, _ := store.Connections(ctx, "laptop-claims-innocence", now.Add(-time.Hour), now.Add(time.Hour), 10); len(cs) != 0 {
			t.Errorf("the node named in the body got connections: %+v", cs)
		}
	})

	t.Run("stored evidence is what admission reads, with its reporter", func(t *testing.T) {
		bs, err := store.BuildsByImageID(ctx, fmt.Sprintf("sha256:%064x", 1))
		if err != nil || len(bs) != 1 || bs[0].Node != "worker-7" || bs[0].Reporter != agentUser {
			t.Fatalf("BuildsByImageID = %+v, %v; want worker-7's build reported by %s", bs, err, agentUser)
		}
	})

	var res ingest.Result
	_, body := p.post("/v1/node-reports/falco", env.bound8, `{"uuid":"f-1","output":"x","priority":"Warning","rule":"Unexpected outbound connection destination","time":"`+
		now.Format(time.RFC3339Nano)+`","hostname":"worker-2","output_fields":{"fd.rip":"198.51.100.4","fd.rport":443,"proc.name":"curl","proc.pid":77,"proc.cmdline":"curl https://x","evt.time":`+
		fmt.Sprint(now.UnixNano())+`}}`)
	if err := json.Unmarshal([]byte(body), &res); err != nil || res.Accepted.Connections != 1 || res.Node != "worker-8" {
		t.Errorf("Falco alert = %s (%v), want one connection accepted as worker-8's", body, err)
	}
}

// TestNodeCannotShadowAnotherNode: a token bound to one node cannot
// pre-post another node's event ID and so make that node's genuine build
// a duplicate (issue 14). The agent's build IDs are predictable.
func TestNodeCannotShadowAnotherNode(t *testing.T) {
	env := sharedEnv(t)
	store := openStore(t)
	p := poster{&ingest.Handler{Store: store, Auth: env.reviewer(t, nil), Formats: ingest.Formats()}}
	image := fmt.Sprintf("sha256:%064x", 0xb8)
	buildID := "docker-build/" + image

	// worker-7 claims worker-8's build first, in worker-8's name.
	if code, body := p.post("/v1/node-reports", env.bound7, nodeReport("worker-8", buildID, 0xb8)); code != 200 {
		t.Fatalf("worker-7's report = %d %s", code, body)
	}
	code, body := p.post("/v1/node-reports", env.bound8, nodeReport("worker-8", buildID, 0xb8))
	if code != 200 || !strings.Contains(body, `"accepted":{"builds":1,`) {
		t.Errorf("worker-8's genuine build = %d %s, want it accepted", code, body)
	}
	bs, err := store.BuildsByImageID(t.Context(), image)
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, b := range bs {
		nodes = append(nodes, b.Node)
	}
	slices.Sort(nodes)
	if want := []string{"worker-7", "worker-8"}; !slices.Equal(nodes, want) {
		t.Errorf("builds of the image are on %v, want %v: each node's report is its own", nodes, want)
	}
}

// TestForwarders: a token bound to no node may name nodes only if its
// user is a forwarder; a forwarder's nodes are believed, and recorded
// with the forwarder as their reporter.
func TestForwarders(t *testing.T) {
	env := sharedEnv(t)
	store := openStore(t)
	p := poster{&ingest.Handler{Store: store, Auth: env.reviewer(t, nil), Formats: ingest.Formats()}}
	ctx := t.Context()
	now := time.Now().UTC().Truncate(time.Second)
	falco := func(uuid, host string) string {
		return `{"uuid":"` + uuid + `","output":"x","priority":"Warning","rule":"Unexpected outbound connection destination","time":"` +
			now.Format(time.RFC3339Nano) + `","hostname":"` + host + `","output_fields":{"fd.rip":"198.51.100.4","fd.rport":443,"proc.name":"curl","proc.pid":77}}`
	}
	docker := `{"Type":"image","Action":"build","Actor":{"ID":"sha256:` + fmt.Sprintf("%064x", 0xd0) + `","Attributes":{"name":"x:1"}},"time":` + fmt.Sprint(now.Unix()) + `}`
	for _, tc := range []struct {
		name, path, token, body string
		wantCode                int
		want                    string
		node                    string // the node the report was stored as
		image                   int    // the build it stored, if any
	}{
		{"a reporter that is not a forwarder cannot name a node with an unbound token",
			"/v1/node-reports", env.agentToken, nodeReport("worker-1", "b-f1", 0xf1), 403, "bound to none", "", 0},
		{"nor with ?node=", "/v1/node-reports/docker?node=worker-1", env.agentToken, docker, 403, "bound to none", "", 0},
		{"a forwarder names nodes", "/v1/node-reports", env.forwarderToken, nodeReport("worker-1", "b-f2", 0xf2), 200, `"builds":1`, "worker-1", 0xf2},
		{"Falco alerts of many nodes, forwarded", "/v1/node-reports/falco", env.forwarderToken, falco("f-1", "worker-2") + "\n" + falco("f-2", "worker-3"), 200, `"connections":2`, "worker-3", 0},
		{"a forwarder's own node is not its reports'", "/v1/node-reports/falco", env.forwarderBound, falco("f-3", "worker-4"), 200, `"connections":1`, "worker-4", 0},
		{"Docker events need ?node= from a forwarder", "/v1/node-reports/docker", env.forwarderToken, docker, 400, "no node", "", 0},
		{"Docker events with ?node=", "/v1/node-reports/docker?node=worker-5", env.forwarderToken, docker, 200, `"builds":1`, "worker-5", 0xd0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := p.post(tc.path, tc.token, tc.body)
			if code != tc.wantCode || !strings.Contains(body, tc.want) {
				t.Fatalf("POST %s = %d %s, want %d containing %q", tc.path, code, body, tc.wantCode, tc.want)
			}
			if tc.node == "" {
				return
			}
			var reporters []string
			if tc.image != 0 {
				bs, _ := store.BuildsByImageID(ctx, fmt.Sprintf("sha256:%064x", tc.image))
				for _, b := range bs {
					if b.Node == tc.node {
						reporters = append(reporters, b.Reporter)
					}
				}
			} else {
				cs, _ := store.Connections(ctx, tc.node, now.Add(-time.Hour), now.Add(time.Hour), 0)
				for _, c := range cs {
					reporters = append(reporters, c.Reporter)
				}
			}
			if len(reporters) == 0 || slices.ContainsFunc(reporters, func(r string) bool { return r != forwarderUser }) {
				t.Errorf("%s's items were reported by %q, want %s", tc.node, reporters, forwarderUser)
			}
		})
	}
	if cs, _ := store.Connections(ctx, "worker-7", now.Add(-time.Hour), now.Add(time.Hour), 0); len(cs) != 0 {
		t.Errorf("worker-7, where the forwarder runs, got its reports: %+v", cs)
	}
}

// gate holds AddReport of the first hold reports of one node until it
// is opened; the others pass.
type gate struct {
	evidence.Store
	node    string
	hold    atomic.Int64
	entered chan struct{}
	open    chan struct{}
}

func (g *gate) AddReport(ctx context.Context, r evidence.Report) (int, int, error) {
	if r.Node == g.node && g.hold.Add(-1) >= 0 {
		g.entered <- struct{}{}
		<-g.open
	}
	return g.Store.AddReport(ctx, r)
}

// TestFairness: every node agent is the same service account, but a node
// that floods is refused alone: by its rate, and by how many of its
// requests are in flight.
func TestFairness(t *testing.T) {
	env := sharedEnv(t)
	auth := env.reviewer(t, nil)
	t.Run("rate", func(t *testing.T) {
		p := poster{&ingest.Handler{Store: openStore(t), Auth: auth, Formats: ingest.Formats(), Rate: 0.01, Burst: 2}}
		var codes []int
		for i := range 6 {
			code, _ := p.post("/v1/node-reports", env.bound7, nodeReport("worker-7", fmt.Sprint("flood-", i), i))
			codes = append(codes, code)
		}
		if want := []int{200, 200, 429, 429, 429, 429}; !slices.Equal(codes, want) {
			t.Errorf("worker-7 flooding: %v, want %v", codes, want)
		}
		if code, body := p.post("/v1/node-reports", env.bound8, nodeReport("worker-8", "calm", 99)); code != 200 {
			t.Errorf("worker-8 after worker-7 flooded = %d %s, want 200", code, body)
		}
	})
	t.Run("in flight", func(t *testing.T) {
		g := &gate{Store: openStore(t), node: "worker-7", entered: make(chan struct{}), open: make(chan struct{})}
		g.hold.Store(2)
		p := poster{&ingest.Handler{Store: g, Auth: auth, Formats: ingest.Formats(), MaxInFlight: 2}}
		var wg sync.WaitGroup
		var held [2]int
		for i := range 2 {
			wg.Go(func() {
				held[i], _ = p.post("/v1/node-reports", env.bound7, nodeReport("worker-7", fmt.Sprint("held-", i), i))
			})
			<-g.entered
		}
		code, _ := p.post("/v1/node-reports", env.bound7, nodeReport("worker-7", "third", 3))
		if code != http.StatusTooManyRequests {
			t.Errorf("worker-7's third request while two are in flight = %d, want 429", code)
		}
		if code, body := p.post("/v1/node-reports", env.bound8, nodeReport("worker-8", "meanwhile", 8)); code != 200 {
			t.Errorf("worker-8 while worker-7 has two in flight = %d %s, want 200", code, body)
		}
		close(g.open)
		wg.Wait()
		if held != [2]int{200, 200} {
			t.Errorf("worker-7's held requests = %v, want 200 when the store answered", held)
		}
	})
}

// TestTokenReviewAtScale: many nodes, each with its own token, report at
// once (a fleet starting, or buildguard restarting), through the client
// that serve makes. client-go's default rate of 5 reviews a second made
// most of them wait past the review's deadline: 503.
func TestTokenReviewAtScale(t *testing.T) {
	env := sharedEnv(t)
	const nodes = 60
	ctx := t.Context()
	tokens := make([]string, nodes)
	for i := range tokens {
		var err error
		if tokens[i], err = env.token(ctx, "buildguard-node-agent", "buildguard", fmt.Sprint("scale-", i)); err != nil {
			t.Fatal(err)
		}
	}
	var reviews atomic.Int64
	auth := env.reviewer(t, &reviews)
	auth.Timeout = 2 * time.Second
	p := poster{&ingest.Handler{Store: openStore(t), Auth: auth, Formats: ingest.Formats()}}
	codes := make([]int, nodes)
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Go(func() { codes[i], _ = p.post("/v1/node-reports", tokens[i], nodeReport("x", "b", i)) })
	}
	wg.Wait()
	refused := 0
	for _, c := range codes {
		if c != 200 {
			refused++
		}
	}
	if refused > 0 || reviews.Load() != nodes {
		t.Errorf("%d nodes at once: %d refused, %d reviews; want 0 refused, %d reviews (codes %v)", nodes, refused, reviews.Load(), nodes, codes)
	}
}
