// Command fleet measures node-report ingestion at the scale of a fleet:
// N nodes, each with its own service-account token bound to an agent pod
// on that node (as the node agent's DaemonSet has), post a NodeReport
// every interval to a real `buildguard serve` over HTTPS on loopback. The
// server checks every new token with a TokenReview against a real
// kube-apiserver (etcd, kube-apiserver and kube-controller-manager of
// bin/, as the e2e tests run them) and stores the reports in its embedded
// SQLite store (synchronous=FULL).
//
// Each node is its own HTTP client with its own TLS connection, and sends
// one report at a time: the next waits for the answer, as the agent's
// sender does. Nodes start at random moments of the first interval.
// The first interval is reported apart ("cold": every token is reviewed
// for the first time, every connection made), then a warm-up while the
// cold interval's backlog drains, then the "sustained" time the targets
// are about.
//
// Usage:
//
//	go run ./bench/fleet [-nodes 1000] [-interval 2s] [-warmup 10s] [-duration 60s] [-conns 10] [-build-every 10]
//
// The exit status is 1 when a target was missed, 2 on an error.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"buildguard.dev/buildguard/e2e"
)

// targetP99 is the latency a fleet of 1,000 nodes reporting every 2s
// should see (docs/benchmark-results.md).
const (
	targetP99 = 100 * time.Millisecond
)

type config struct {
	nodes      int
	interval   time.Duration
	warmup     time.Duration
	duration   time.Duration
	conns      int
	buildEvery int
	keep       bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var c config
	fs := flag.NewFlagSet("fleet", flag.ContinueOnError)
	fs.IntVar(&c.nodes, "nodes", 1000, "nodes reporting, each with its own token")
	fs.DurationVar(&c.interval, "interval", 2*time.Second, "how often each node reports (the agent's --batch-interval)")
	fs.DurationVar(&c.warmup, "warmup", 10*time.Second, "time after the first interval before the measured one, while the first interval's backlog drains")
	fs.DurationVar(&c.duration, "duration", 60*time.Second, "measured (sustained) time, after the warm-up")
	fs.IntVar(&c.conns, "conns", 10, "connections in each report, every one new")
	fs.IntVar(&c.buildEvery, "build-every", 10, "one report in this many also carries a build")
	fs.BoolVar(&c.keep, "keep", false, "keep the work directory (logs, the store)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if c.nodes < 1 || c.interval <= 0 || c.duration <= 0 || c.warmup < 0 || c.conns < 0 || c.buildEvery < 1 {
		fmt.Fprintln(os.Stderr, "fleet: -nodes, -interval, -duration and -build-every must be positive, -warmup and -conns not negative")
		os.Exit(2)
	}
	missed, err := run(ctx, c, os.Stdout)
	switch {
	case err != nil:
		fmt.Fprintln(os.Stderr, "fleet:", err)
		os.Exit(2)
	case missed:
		os.Exit(1)
	}
}

func run(ctx context.Context, c config, out io.Writer) (missed bool, err error) {
	dir, err := os.MkdirTemp("", "buildguard-fleet-")
	if err != nil {
		return false, err
	}
	if c.keep {
		fmt.Fprintln(out, "work directory:", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	logf := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}
	logf("building buildguard, starting the control plane")
	bin, err := e2e.BuildBuildguard(ctx, dir)
	if err != nil {
		return false, err
	}
	cp, err := e2e.StartControlPlane(ctx, dir)
	if err != nil {
		return false, err
	}
	defer cp.Stop()
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		return false, err
	}
	cfg.QPS, cfg.Burst = -1, 0
	admin, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return false, err
	}

	logf("creating %d nodes, agent pods and tokens", c.nodes)
	start := time.Now()
	tokens, err := agentTokens(ctx, admin, c.nodes)
	if err != nil {
		return false, err
	}
	logf("created in %v", time.Since(start).Round(time.Second))

	policyFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyFile, []byte(policyYAML), 0o644); err != nil {
		return false, err
	}
	bg, err := e2e.StartBuildguard(ctx, bin, dir, cp, "", "--policy-source=file", "--config="+policyFile,
		"--store-sqlite="+filepath.Join(dir, "evidence.db"))
	if err != nil {
		return false, err
	}
	defer bg.Stop()
	ca, err := servingCA(ctx, admin)
	if err != nil {
		return false, err
	}
	url := "https://" + strings.Replace(bg.Addr, "127.0.0.1", "localhost", 1) + "/v1/node-reports"
	var apiserver *e2e.Process
	for _, p := range cp.Processes() {
		if p.Name == "kube-apiserver" {
			apiserver = p
		}
	}

	fmt.Fprintf(out, "%d nodes, a report every %v each (%.0f reports/s), %d connections and 1 build in %d reports; %v of warm-up after the first interval, then %v measured\n",
		c.nodes, c.interval, float64(c.nodes)/c.interval.Seconds(), c.conns, c.buildEvery, c.warmup, c.duration)
	// What the store's commits wait for, on this disk now.
	if p50, p99, err := fsyncLatency(dir); err == nil {
		fmt.Fprintf(out, "fsync of a 16 KiB write in the work directory, 200 times: p50 %s, p99 %s; load average %s\n", ms(p50), ms(p99), loadAverage())
	}
	fmt.Fprintln(out)
	phases := []*phase{
		{name: "cold (first interval)", window: c.interval},
		{name: "warm-up", window: c.warmup},
		{name: "sustained", window: c.duration},
	}
	t0 := time.Now()
	starts := []time.Time{t0, t0.Add(c.interval), t0.Add(c.interval + c.warmup)}
	end := starts[2].Add(c.duration)

	var wg sync.WaitGroup
	results := make([][]result, c.nodes)
	for i := range c.nodes {
		wg.Go(func() { results[i] = node(ctx, c, i, tokens[i], url, ca, t0, end) })
	}
	for i, p := range phases {
		time.Sleep(time.Until(starts[i]))
		if i > 0 {
			phases[i-1].finish(time.Now(), reviews(ctx, admin))
		}
		p.begin(time.Now(), bg.Proc.Pid(), apiserver.Pid(), reviews(ctx, admin))
	}
	wg.Wait()
	phases[2].finish(time.Now(), reviews(ctx, admin))
	if err := ctx.Err(); err != nil {
		return false, err
	}
	for _, rs := range results {
		for _, r := range rs {
			i := 0
			for i < 2 && !r.sent.Before(starts[i+1]) {
				i++
			}
			phases[i].add(r)
		}
	}

	fmt.Fprintln(out, "| phase | reports | reports/s | refused | p50 | p90 | p99 | max | TokenReviews | buildguard CPU | per report | kube-apiserver CPU | load generator CPU | machine idle | machine I/O wait |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range phases {
		p.print(out)
	}
	fmt.Fprintln(out)
	s := phases[2]
	for _, p := range phases {
		if len(p.refused) > 0 {
			fmt.Fprintf(out, "- %s: refused %s\n", p.name, p.refusedText())
		}
	}
	ok := len(s.refused) == 0
	fmt.Fprintf(out, "- sustained, refused: %d; target 0: %s\n", s.refusedCount(), verdict(ok))
	p99 := s.quantile(0.99)
	fmt.Fprintf(out, "- sustained, p99: %s; target < %v: %s\n", ms(p99), targetP99, verdict(p99 < targetP99))
	want := float64(c.nodes) / c.interval.Seconds()
	got := float64(len(s.lat)) / c.duration.Seconds()
	fmt.Fprintf(out, "- sustained, reports/s: %.0f of the %.0f the nodes would send on time (a node's next report waits for the last answer)\n", got, want)
	fmt.Fprintf(out, "- load average at the end: %s\n", loadAverage())
	return !ok || p99 >= targetP99, nil
}

// fsyncLatency writes and fsyncs 16 KiB 200 times in dir.
func fsyncLatency(dir string) (p50, p99 time.Duration, err error) {
	f, err := os.CreateTemp(dir, "fsync-")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 16<<10)
	var ds []time.Duration
	for range 200 {
		if _, err := f.Write(buf); err != nil {
			return 0, 0, err
		}
		t := time.Now()
		if err := f.Sync(); err != nil {
			return 0, 0, err
		}
		ds = append(ds, time.Since(t))
	}
	slices.Sort(ds)
	return ds[100], ds[198], nil
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

const policyYAML = `apiVersion: buildguard.dev/v1alpha1
kind: Policy
registries:
  allow: ["127.0.0.1:*/*"]
nodeEvidence:
  approvedBuildNodes: ["ci-runner-*"]
`

// agentTokens creates node-<i>, a pod of the node agent's service account
// on it, and a token bound to that pod, for i in [0, n).
func agentTokens(ctx context.Context, admin kubernetes.Interface, n int) ([]string, error) {
	// As manifests/node-agent: buildguard serve's default --reporters.
	// buildguard-system holds buildguard's self-managed CA.
	const ns, sa = "buildguard-node-agent", "buildguard-node-agent"
	for _, n := range []string{"buildguard-system", ns} {
		if _, err := admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			return nil, err
		}
	}
	if _, err := admin.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		return nil, err
	}
	tokens := make([]string, n)
	errs := make([]error, n)
	work := make(chan int)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := range work {
				tokens[i], errs[i] = agentToken(ctx, admin, ns, sa, fmt.Sprintf("node-%04d", i))
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return tokens, errors.Join(errs...)
}

func agentToken(ctx context.Context, admin kubernetes.Interface, ns, sa, node string) (string, error) {
	if _, err := admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{}); err != nil {
		return "", err
	}
	no := false
	pod, err := admin.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "node-agent-" + node},
		Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa, AutomountServiceAccountToken: &no,
			// No kubelet runs: the nodes go NotReady, and their pods
			// would be evicted after 5 minutes, their tokens with them.
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers:  []corev1.Container{{Name: "agent", Image: "agent:1"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	exp := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		Audiences: []string{"buildguard"}, ExpirationSeconds: &exp,
		BoundObjectRef: &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	return tr.Status.Token, nil
}

// servingCA is the CA of buildguard's self-managed serving certificate.
func servingCA(ctx context.Context, admin kubernetes.Interface) (*x509.CertPool, error) {
	s, err := admin.CoreV1().Secrets("buildguard-system").Get(ctx, "buildguard-ca", metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(s.Data["ca.crt"]) {
		return nil, errors.New("secret buildguard-system/buildguard-ca: no ca.crt")
	}
	return pool, nil
}

// reviews is the number of TokenReviews the API server has answered.
func reviews(ctx context.Context, admin kubernetes.Interface) float64 {
	b, err := admin.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return -1
	}
	var n float64
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "apiserver_request_total{") && strings.Contains(line, `resource="tokenreviews"`) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += v
		}
	}
	return n
}

type result struct {
	sent time.Time
	lat  time.Duration
	code int // 0: no answer
	err  string
}

// node reports every c.interval from a random moment of the first
// interval until end, one report at a time.
func node(ctx context.Context, c config, i int, token, url string, ca *x509.CertPool, t0, end time.Time) []result {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: ca}, MaxIdleConnsPerHost: 1}}
	defer client.CloseIdleConnections()
	name := fmt.Sprintf("node-%04d", i)
	next := t0.Add(rand.N(c.interval))
	var out []result
	for seq := 0; next.Before(end); seq++ {
		select {
		case <-ctx.Done():
			return out
		case <-time.After(time.Until(next)):
		}
		body := report(name, i, seq, c)
		start := time.Now()
		r := result{sent: start}
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			r.err = err.Error()
		} else {
			msg, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			r.code = resp.StatusCode
			if r.code != http.StatusOK {
				r.err = strings.TrimSpace(string(msg))
			}
		}
		r.lat = time.Since(start)
		out = append(out, r)
		// The agent's next batch is due an interval after the last; a
		// late answer delays it.
		next = next.Add(c.interval)
		if now := time.Now(); next.Before(now) {
			next = now
		}
	}
	return out
}

func report(name string, i, seq int, c config) []byte {
	now := time.Now().UTC()
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":%q,"sensor":"ebpf","builds":[`, name)
	if seq%c.buildEvery == 0 {
		fmt.Fprintf(&b, `{"eventID":"docker-build/%d/%d","tool":"docker","imageID":"sha256:%032x%032x","tags":["registry.acme.internal/shop/api:%d"],"started":%q,"finished":%q,"pids":[48100,48213]}`,
			i, seq, i, seq, seq, now.Add(-time.Minute).Format(time.RFC3339Nano), now.Format(time.RFC3339Nano))
	}
	b.WriteString(`],"connections":[`)
	for k := range c.conns {
		if k > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"eventID":"ebpf/%d/%d/%d","time":%q,"process":"wget","pid":%d,"cmdline":"wget -q http://203.0.113.9:8080/payload","destIP":"203.0.113.%d","destPort":443}`,
			i, seq, k, now.Add(-time.Duration(k)*time.Millisecond).Format(time.RFC3339Nano), 48213+k, k%250+1)
	}
	b.WriteString(`]}`)
	return b.Bytes()
}

// phase is the results of the reports sent in a span of time, with the
// CPU that the server, the API server and this load generator used from
// its start until its last answer (a share of one core: 200% is both of a
// 2-core machine's), and the shares of the machine's CPU time left idle
// and spent waiting for I/O (what the store's fsyncs wait for).
type phase struct {
	name                   string
	window                 time.Duration // when its reports were sent
	from, to               time.Time
	bgPid, apiPid          int
	bgCPU0, apiCPU0        time.Duration
	bgCPU, apiCPU          time.Duration
	selfCPU0, selfCPU      time.Duration
	idle0, iowait0, total0 int64
	idle, iowait           float64 // the machine's idle and I/O wait shares
	reviews0, reviewsTotal float64
	lat                    []time.Duration
	refused                map[string]int
}

func (p *phase) begin(t time.Time, bgPid, apiPid int, reviews float64) {
	p.from, p.bgPid, p.apiPid, p.reviews0 = t, bgPid, apiPid, reviews
	p.bgCPU0, p.apiCPU0, p.selfCPU0 = procCPU(bgPid), procCPU(apiPid), procCPU(os.Getpid())
	p.idle0, p.iowait0, p.total0 = machineCPU()
}

func (p *phase) finish(t time.Time, reviews float64) {
	p.to = t
	p.bgCPU, p.apiCPU, p.selfCPU = procCPU(p.bgPid)-p.bgCPU0, procCPU(p.apiPid)-p.apiCPU0, procCPU(os.Getpid())-p.selfCPU0
	p.reviewsTotal = reviews - p.reviews0
	idle, iowait, total := machineCPU()
	if total > p.total0 {
		p.idle = float64(idle-p.idle0) / float64(total-p.total0)
		p.iowait = float64(iowait-p.iowait0) / float64(total-p.total0)
	}
}

func (p *phase) elapsed() time.Duration { return p.to.Sub(p.from) }

func (p *phase) add(r result) {
	p.lat = append(p.lat, r.lat)
	if r.code == http.StatusOK {
		return
	}
	if p.refused == nil {
		p.refused = map[string]int{}
	}
	key := strconv.Itoa(r.code)
	if r.code == 0 {
		key = "no answer"
	}
	msg := r.err
	if len(msg) > 80 {
		msg = msg[:80] + "…"
	}
	p.refused[key+" "+msg]++
}

func (p *phase) refusedCount() int {
	n := 0
	for _, v := range p.refused {
		n += v
	}
	return n
}

func (p *phase) refusedText() string {
	var parts []string
	for k, v := range p.refused {
		parts = append(parts, fmt.Sprintf("%d × %s", v, k))
	}
	slices.Sort(parts)
	return strings.Join(parts, "; ")
}

func (p *phase) quantile(q float64) time.Duration {
	if len(p.lat) == 0 {
		return 0
	}
	l := slices.Clone(p.lat)
	slices.Sort(l)
	return l[min(len(l)-1, int(q*float64(len(l))))]
}

func (p *phase) print(out io.Writer) {
	secs := p.elapsed().Seconds()
	if p.window <= 0 || len(p.lat) == 0 {
		fmt.Fprintf(out, "| %s | %d | | | | | | | | | | | | | |\n", p.name, len(p.lat))
		return
	}
	perReport := time.Duration(0)
	if len(p.lat) > 0 {
		perReport = p.bgCPU / time.Duration(len(p.lat))
	}
	fmt.Fprintf(out, "| %s | %d | %.0f | %d | %s | %s | %s | %s | %.0f | %.0f%% | %d µs | %.0f%% | %.0f%% | %.0f%% | %.0f%% |\n", p.name, len(p.lat), float64(len(p.lat))/p.window.Seconds(),
		p.refusedCount(), ms(p.quantile(0.5)), ms(p.quantile(0.9)), ms(p.quantile(0.99)), ms(p.quantile(1)),
		p.reviewsTotal, 100*p.bgCPU.Seconds()/secs, perReport.Microseconds(), 100*p.apiCPU.Seconds()/secs, 100*p.selfCPU.Seconds()/secs, 100*p.idle, 100*p.iowait)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// procCPU is the user and system CPU time process pid has used (Linux).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name, in parentheses, may hold spaces: fields count
	// from after it. utime and stime are fields 14 and 15, in clock ticks
	// (100 a second on Linux).
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

// machineCPU is the idle, I/O wait and total CPU time of the machine, in
// clock ticks, from the first line of /proc/stat.
func machineCPU() (idle, iowait, total int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	for i, f := range strings.Fields(line)[1:] {
		v, _ := strconv.ParseInt(f, 10, 64)
		if i < 8 { // user nice system idle iowait irq softirq steal; guest time is in user already
			total += v
		}
		switch i {
		case 3:
			idle += v
		case 4:
			iowait += v
		}
	}
	return idle, iowait, total
}
