package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	certtls "github.com/cert-manager/cert-manager/pkg/server/tls"
	"github.com/cert-manager/cert-manager/pkg/server/tls/authority"
	"golang.org/x/time/rate"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"buildguard.dev/buildguard/cluster"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/ingest"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/provenance"
	"buildguard.dev/buildguard/records"
	"buildguard.dev/buildguard/registry"
	"buildguard.dev/buildguard/server"
	"buildguard.dev/buildguard/webhook"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var rf registryFlags
	rf.register(fs)
	var pvf provenanceFlags
	pvf.register(fs)
	listen := fs.String("listen", ":8443", "address to serve HTTPS on")
	drainDelay := fs.Duration("drain-delay", defaultDrainDelay(), "on SIGTERM, keep serving this long with /readyz failing before stopping, while the cluster takes the pod out of the Service's endpoints (default 5s in a pod, 0 elsewhere)")
	certFile := fs.String("tls-cert-file", "", "PEM certificate (chain); reloaded when it changes (required)")
	keyFile := fs.String("tls-private-key-file", "", "PEM private key; reloaded when it changes (required)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for namespace labels and pull secrets; in a cluster the pod's service account is used")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	reload := fs.Duration("policy-reload-interval", 5*time.Second, "how often the policy file is checked for changes")
	source := fs.String("policy-source", "", `where policies come from: "file" (--config) or "crd" (ClusterBuildPolicy and BuildPolicyException resources); the default is file when --config is set`)
	caSecret := fs.String("self-managed-ca-secret", "", "instead of TLS files, keep a CA in this Secret ([namespace/]name) and serve certificates it signs for --tls-dns-names")
	dnsNames := fs.String("tls-dns-names", "", "comma-separated DNS names of the serving certificate with --self-managed-ca-secret")
	tlsCAFile := fs.String("tls-ca-file", "", "PEM file of the CA that signed --tls-cert-file (cert-manager writes ca.crt beside it), published with --ca-configmap")
	caConfigMap := fs.String("ca-configmap", "", "[namespace/]name of a ConfigMap whose key ca.crt is kept equal to the CA of the serving certificate (the self-managed CA, or --tls-ca-file): the node agents' (in another namespace) check buildguard with it")
	var sf storeFlags
	sf.register(fs)
	reporters := fs.String("reporters", defaultReporters, "comma-separated users (service accounts) that may post node reports for the node their token is bound to")
	forwarders := fs.String("report-forwarders", "", "comma-separated users (service accounts) that may post node reports for any node, such as a central falcosidekick (none by default)")
	reportAudience := fs.String("report-audience", "buildguard", "audience node reporters' tokens must be bound to")
	reportRate := fs.Float64("report-rate", ingest.DefaultRate, "node reports a second each node may post (bursts of twice as many)")
	forwarderRate := fs.Float64("forwarder-report-rate", ingest.DefaultForwarderRate, "node reports a second each of --report-forwarders may post (bursts of twice as many)")
	retention := fs.Duration("retention", 7*24*time.Hour, "how long node evidence and decision records are kept")
	retentionRows := fs.Int("retention-rows", 5_000_000, "at most this many rows per store table (0: no cap)")
	decisionJournal := fs.String("decision-journal", "", "file where decision records wait while the store is unavailable, slow or busy (default: the --store-sqlite file + \".decisions.journal\"; with PostgreSQL: $TMPDIR/buildguard.decisions.journal)")
	decisionQueue := fs.Int("decision-queue", records.DefaultQueueSize, "allow and warn records kept in memory for the store before they go to the journal (a deny or would-deny is on disk before it is answered)")
	decisionCommit := fs.String("decision-commit", "", `where a deny or would-deny is made durable before it is answered: "store" (a transaction for all those waiting; the journal when the store fails or is slow) or "journal" (an fsynced local file, moved to the store within about 100ms; the store when the journal fails); the default is store with SQLite, journal with PostgreSQL`)
	statusLease := fs.String("status-lease", cluster.DefaultStatusLease, "with --policy-source=crd, the Lease ([namespace/]name; the default namespace is the pod's) that elects the one replica writing the status of ClusterBuildPolicies and BuildPolicyExceptions (\"\": every replica writes)")
	webhookConfig := fs.String("webhook-configuration", "", "with --self-managed-ca-secret, the name of the Validating- and MutatingWebhookConfiguration whose caBundle is kept current")
	var al auditLoop
	al.register(fs)
	var rvf reviewFlags
	rvf.register(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{msg: fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	if *source == "" {
		*source = "file"
	}
	if *decisionCommit != "" && *decisionCommit != "store" && *decisionCommit != "journal" {
		return &usageError{msg: fmt.Sprintf("--decision-commit %q: want store or journal", *decisionCommit)}
	}
	switch {
	case *source != "file" && *source != "crd":
		return &usageError{msg: fmt.Sprintf("--policy-source %q: want file or crd", *source)}
	case *source == "file" && rf.config == "":
		return &usageError{msg: "--config is required (or --policy-source=crd)"}
	case *caSecret != "" && (*certFile != "" || *keyFile != ""):
		return &usageError{msg: "--self-managed-ca-secret and --tls-cert-file/--tls-private-key-file exclude each other"}
	case *caSecret != "" && *dnsNames == "":
		return &usageError{msg: "--self-managed-ca-secret needs --tls-dns-names"}
	case !(*reportRate > 0) || !(*forwarderRate > 0):
		return &usageError{msg: fmt.Sprintf("--report-rate %v, --forwarder-report-rate %v: want more than 0", *reportRate, *forwarderRate)}
	case *drainDelay < 0:
		return &usageError{msg: fmt.Sprintf("--drain-delay %v: want 0 or more", *drainDelay)}
	case *caSecret != "" && *tlsCAFile != "":
		return &usageError{msg: "--tls-ca-file is for --tls-cert-file: the self-managed CA is published from its Secret"}
	case *caConfigMap != "" && *caSecret == "" && *tlsCAFile == "":
		return &usageError{msg: "--ca-configmap needs the CA: --self-managed-ca-secret, or --tls-ca-file with --tls-cert-file"}
	}
	log, err := newLogger(*logFormat, stderr)
	if err != nil {
		return err
	}

	// Validate everything before serving anything.
	if *caSecret == "" {
		if err := server.CheckFiles(*certFile, *keyFile); err != nil {
			return err
		}
	}
	cfg, err := kubeConfig(*kubeconfig)
	if err != nil {
		return err
	}
	if cfg == nil && (*source == "crd" || *caSecret != "" || *caConfigMap != "") {
		return &usageError{msg: "--policy-source=crd, --self-managed-ca-secret and --ca-configmap need a cluster: run inside one or pass --kubeconfig"}
	}
	var kube kubernetes.Interface
	if cfg != nil {
		if kube, err = kubernetes.NewForConfig(cfg); err != nil {
			return err
		}
	}

	metrics := webhook.NewMetrics()
	e := &engine.Engine{
		Resolver:  rf.client(metrics),
		Keychains: registry.StaticKeychain{Auth: registry.DockerConfig},
		Now:       time.Now,
		Timeout:   rf.timeout,
		Log:       log,
	}
	pvf.reg = metrics.Registry()
	e.Verifier = pvf.verifier(e.Resolver)
	if v, ok := e.Verifier.(*provenance.Verifier); ok {
		v.Log = log // ClusterBuildPolicies' unusable trust files are reported here
	}
	var checks []func() error
	switch *source {
	case "file":
		pf := &policyFile{path: rf.config, log: log, check: func(p *policy.Policy) error { return provenance.CheckTrust(p.Trust()) }}
		if err := pf.load(); err != nil {
			return err
		}
		e.Policies = engine.PolicyFunc(pf.current)
		go pf.watch(ctx, *reload)
	case "crd":
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return err
		}
		src := &cluster.Source{Client: dyn, Log: log,
			Validate: func(p *policy.Policy) error { return provenance.CheckTrust(p.Trust()) }}
		lease, err := newStatusLease(*statusLease, kube, log)
		if err != nil {
			return err
		}
		if lease != nil {
			src.Leading = lease.Leading
		}
		synced := src.Start(ctx)
		if lease != nil {
			leaseDone := make(chan struct{})
			go func() {
				defer close(leaseDone)
				lease.Run(ctx, src.WriteStatus)
			}()
			// The Lease is released when ctx ends: wait for it, or the
			// next replica waits out its duration (15s) to take over.
			defer func() {
				select {
				case <-leaseDone:
				case <-time.After(5 * time.Second):
				}
			}()
		}
		e.Policies = src
		checks = append(checks, func() error {
			if !synced() {
				return errors.New("policy informers not synced")
			}
			return nil
		})
	}
	var certs certtls.CertificateSource
	publish := &cluster.CABundle{Client: kube, Log: log}
	if *caSecret != "" {
		ns, name, err := objectRef("--self-managed-ca-secret", *caSecret)
		if err != nil {
			return err
		}
		certs = &certtls.DynamicSource{
			DNSNames: strings.Split(*dnsNames, ","),
			Authority: &authority.DynamicAuthority{
				SecretNamespace: ns, SecretName: name, RESTConfig: cfg, CommonName: "buildguard-ca",
			},
		}
		publish.CA = cluster.SecretCA{Client: kube, Namespace: ns, Name: name}
		publish.Webhook = *webhookConfig
	} else if *tlsCAFile != "" {
		publish.CA = cluster.FileCA(*tlsCAFile)
	}
	if *caConfigMap != "" {
		if publish.ConfigMapNamespace, publish.ConfigMapName, err = objectRef("--ca-configmap", *caConfigMap); err != nil {
			return err
		}
	}
	if publish.Webhook != "" || publish.ConfigMapName != "" {
		go publish.Run(ctx)
	}
	if kube != nil {
		factory := informers.NewSharedInformerFactory(kube, 10*time.Minute)
		nsInformer := factory.Core().V1().Namespaces()
		e.Namespaces = namespaceLabels{lister: nsInformer.Lister(), client: kube}
		e.Keychains = &registry.KubernetesKeychains{Client: kube}
		synced := nsInformer.Informer().HasSynced
		factory.Start(ctx.Done())
		checks = append(checks, func() error {
			if !synced() {
				return errors.New("namespace informer not synced")
			}
			return nil
		})
	}
	ready := func() error {
		for _, c := range checks {
			if err := c(); err != nil {
				return err
			}
		}
		return nil
	}

	store, err := sf.open(ctx)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	// Every decision is counted; with a store it is recorded (a deny or
	// would-deny before it is answered), in a cluster a deny or
	// would-deny is posted as an Event. The hooks do not block.
	type hook = func(context.Context, *admissionv1.AdmissionRequest, engine.Workload, policy.Verdict)
	hooks := []hook{metrics.Decided}
	var recorder webhook.DecisionRecorder
	var ev *cluster.Events
	if kube != nil {
		ev = cluster.NewEvents(kube)
		defer ev.Shutdown()
		hooks = append(hooks, (&records.Notifier{Sink: ev}).OnDecision)
	}
	if store != nil {
		defer store.Close()
		journal := *decisionJournal
		if journal == "" && sf.sqlite != "" {
			journal = sf.sqlite + ".decisions.journal"
		}
		if journal == "" {
			// An emptyDir outlives container restarts; a volume that
			// outlives the pod is better, and --decision-journal names it.
			journal = filepath.Join(os.TempDir(), "buildguard.decisions.journal")
			log.Warn("decision records wait in a journal under the temporary directory; set --decision-journal to a volume that outlives the pod", "path", journal)
		}
		// A PostgreSQL commit is a round trip and the server's commit; a
		// local fsync is several times faster (docs/benchmarks.md).
		journalFirst := *decisionCommit == "journal" || *decisionCommit == "" && sf.sqlite == ""
		rec, err := records.New(store, journal, records.WithQueueSize(*decisionQueue), records.WithLogger(log),
			records.WithJournalFirst(journalFirst), records.WithRegisterer(metrics.Registry()))
		if err != nil {
			return err
		}
		defer rec.Close() // before store.Close: queued records are stored or journaled
		recorder = rec
		e.Evidence = store
		go prune(ctx, store, *retention, *retentionRows, log)
		if kube == nil {
			log.Warn("node reports are not accepted outside a cluster: they are authenticated with TokenReview")
		} else {
			retro := ingest.NewRetro(e, ev, metrics.Registry(), log)
			retro.Record = rec.Record // late findings join the decision records
			hooks = append(hooks, func(_ context.Context, req *admissionv1.AdmissionRequest, w engine.Workload, v policy.Verdict) {
				retro.Admitted(string(req.UID), w, v)
			})
			reviews, err := ingest.NewReviewClient(cfg)
			if err != nil {
				return err
			}
			auth := &ingest.TokenReviewer{Client: reviews, Audiences: []string{*reportAudience},
				Allowed: splitList(*reporters), Forwarders: splitList(*forwarders)}
			defer auth.Close()
			im, err := ingest.NewMetrics(metrics.Registry(), ingest.Formats())
			if err != nil {
				return err
			}
			ih := &ingest.Handler{
				Metrics:       im,
				Store:         store,
				Auth:          auth,
				Formats:       ingest.Formats(),
				Rate:          rate.Limit(*reportRate),
				Burst:         max(1, int(2**reportRate)),
				ForwarderRate: rate.Limit(*forwarderRate), ForwarderBurst: max(1, int(2**forwarderRate)),
				OnReport: retro.Report,
				Log:      log,
			}
			for path := range ih.Formats {
				mux.Handle(path, ih)
			}
		}
	}
	onDecision := func(ctx context.Context, req *admissionv1.AdmissionRequest, w engine.Workload, v policy.Verdict) {
		for _, h := range hooks {
			h(ctx, req, w, v)
		}
	}
	// Before anything evaluates: an --exceptions-file wraps e.Policies.
	if err := rvf.start(ctx, reviewDeps{engine: e, source: *source, cfg: cfg, kube: kube, store: store, certs: certs,
		certFile: *certFile, keyFile: *keyFile, reload: *reload, log: log}); err != nil {
		return err
	}
	if err := al.start(ctx, cfg, kube, e, store, ready, log, metrics.Registry()); err != nil {
		return err
	}
	mux.Handle("/validate", &webhook.Handler{Evaluator: e, Metrics: metrics, Log: log, OnDecision: onDecision, Recorder: recorder})
	mux.Handle("/mutate", &webhook.Mutator{Evaluator: e, Log: log})
	mux.Handle("/metrics", metrics.Handler())
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	s := &server.Server{Listener: ln, CertFile: *certFile, KeyFile: *keyFile, Certificates: certs, Handler: mux, Ready: ready, Metrics: metrics.Registry(),
		DrainDelay: *drainDelay, Log: log}
	return s.Run(ctx)
}

// kubeConfig returns the configuration of --kubeconfig, or of the pod's
// service account inside a cluster, or nil outside one.
func kubeConfig(kubeconfig string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	cfg.UserAgent = "buildguard/" + version
	return cfg, nil
}

// newStatusLease resolves --status-lease: nil when it is empty, or when
// it names no namespace outside a pod (a process of its own, which has
// no other replica to agree with).
func newStatusLease(flag string, kube kubernetes.Interface, log *slog.Logger) (*cluster.StatusLease, error) {
	if flag == "" {
		return nil, nil
	}
	if !strings.Contains(flag, "/") {
		if _, err := os.Stat(podNamespaceFile); err != nil {
			log.Info("policy status is written without a lease: not in a pod (give --status-lease=namespace/name to elect one writer among replicas)")
			return nil, nil
		}
	}
	ns, name, err := objectRef("--status-lease", flag)
	if err != nil {
		return nil, err
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("--status-lease: naming this replica: %w", err)
	}
	var suffix [6]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return nil, err
	}
	// The pod's name, and a suffix: a restarted container is a new
	// candidate, not the holder of its predecessor's lease.
	return &cluster.StatusLease{Client: kube, Namespace: ns, Name: name, Identity: host + "_" + hex.EncodeToString(suffix[:]), Log: log}, nil
}

// defaultDrainDelay is 5s in a pod: the API server keeps sending
// admissions to a terminating pod until the EndpointSlice update reaches
// it, a second or two, more on a busy cluster; the Deployment's
// terminationGracePeriodSeconds (30) covers the delay, the requests in
// flight (server.DefaultShutdownTimeout) and the decision records'
// flush. Outside a pod nothing routes by endpoints, and a process that
// stops at once is what its user expects.
func defaultDrainDelay() time.Duration {
	if os.Getenv("KUBERNETES_SERVICE_HOST") != "" {
		return 5 * time.Second
	}
	return 0
}

// podNamespaceFile holds the namespace of the pod the process runs in.
const podNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// defaultReporters is the node agent's service account of
// manifests/node-agent, in the agent's own namespace.
const defaultReporters = "system:serviceaccount:buildguard-node-agent:buildguard-node-agent"

// objectRef parses flag's value "[namespace/]name"; the namespace
// defaults to the pod's own.
func objectRef(flag, s string) (ns, name string, err error) {
	if ns, name, ok := strings.Cut(s, "/"); ok {
		if ns == "" || name == "" {
			return "", "", &usageError{msg: fmt.Sprintf("%s %q: want [namespace/]name", flag, s)}
		}
		return ns, name, nil
	}
	b, err := os.ReadFile(podNamespaceFile)
	if err != nil {
		return "", "", fmt.Errorf("%s %q: give namespace/name outside a pod (%v)", flag, s, err)
	}
	return strings.TrimSpace(string(b)), s, nil
}

// namespaceLabels reads namespace labels from an informer's cache, and
// from the API server for a namespace the cache has not seen yet (one
// created a moment ago).
type namespaceLabels struct {
	lister listersv1.NamespaceLister
	client kubernetes.Interface
}

func (n namespaceLabels) Labels(ctx context.Context, ns string) (map[string]string, error) {
	o, err := n.lister.Get(ns)
	if apierrors.IsNotFound(err) {
		o, err = n.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	}
	if err != nil {
		return nil, err
	}
	return o.Labels, nil
}

// fixedLabels gives every namespace the same labels (check --mode).
type fixedLabels map[string]string

func (f fixedLabels) Labels(context.Context, string) (map[string]string, error) { return f, nil }

func podWithImage(img string) *corev1.PodSpec {
	return &corev1.PodSpec{Containers: []corev1.Container{{Name: "check", Image: img}}}
}

// policyFile holds the policy read from a file and reloads it when the
// file changes. A changed file that does not validate is logged and the
// previous policy stays in force: a policy is never half-applied.
type policyFile struct {
	path string
	log  *slog.Logger
	cur  atomic.Pointer[policy.Policy]
	raw  []byte
	// check validates a parsed policy further (its trust files), or nil.
	check func(*policy.Policy) error
}

func (f *policyFile) current() *policy.Policy { return f.cur.Load() }

func (f *policyFile) load() error {
	raw, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if f.raw != nil && bytes.Equal(raw, f.raw) {
		return nil
	}
	p, err := policy.Parse(raw)
	if err != nil {
		return fmt.Errorf("policy %s: %w", f.path, err)
	}
	if f.check != nil {
		if err := f.check(p); err != nil {
			return fmt.Errorf("policy %s: %w", f.path, err)
		}
	}
	f.raw = raw
	f.cur.Store(p)
	f.log.Info("policy loaded", "path", f.path, "mode", string(p.Mode()))
	return nil
}

func (f *policyFile) watch(ctx context.Context, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := f.load(); err != nil {
				f.log.Error("policy not reloaded; the previous policy stays in force", "error", err)
			}
		}
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// prune applies retention every hour.
func prune(ctx context.Context, st evidence.Store, keep time.Duration, rows int, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		n, err := st.Prune(ctx, time.Now().Add(-keep), rows)
		if err != nil {
			log.Warn("store retention failed", "error", err)
		} else if n > 0 {
			log.Info("store retention", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
