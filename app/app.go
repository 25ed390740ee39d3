package app

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	certtls "github.com/cert-manager/cert-manager/pkg/server/tls"
	"github.com/cert-manager/cert-manager/pkg/server/tls/authority"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/cluster"
	"buildguard.dev/buildguard/decision"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/ingest"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/policyreport"
	"buildguard.dev/buildguard/policysource"
	"buildguard.dev/buildguard/provenance"
	"buildguard.dev/buildguard/records"
	"buildguard.dev/buildguard/registry"
	"buildguard.dev/buildguard/retro"
	"buildguard.dev/buildguard/server"
	"buildguard.dev/buildguard/webhook"
)

// leaseReleaseWait bounds how long Run waits, once its context ends, for
// the status Lease to be released: without the release, the next replica
// waits out the Lease's duration (15s) to take over.
const leaseReleaseWait = 5 * time.Second

// pruneInterval is how often retention is applied to the store.
const pruneInterval = time.Hour

// App is `buildguard serve`, built and not yet running.
type App struct {
	opts Options
	refs refs // parsed from opts
	log  *slog.Logger
	// clock times the store's retention and the wait for the status
	// Lease's release; nil is the real clock (tests set another).
	clock clock.Clock

	kube      kubernetes.Interface // nil outside a cluster
	engine    *engine.Engine
	metrics   *webhook.Metrics
	webhook   *server.Server
	informers informers.SharedInformerFactory // nil outside a cluster
	crd       *policysource.CRD               // nil with a policy file
	file      *policysource.File              // nil with the CRD source
	lease     *cluster.StatusLease            // nil: every replica writes status
	publish   *cluster.CABundle               // nil: no CA to publish
	reloader  *policysource.Reloader
	store     evidence.Store        // nil without one
	recorder  *records.Recorder     // nil without a store
	events    *cluster.Events       // nil outside a cluster
	reports   *ingest.TokenReviewer // nil: no node-report endpoints
	review    *reviewServer         // nil without --review-listen
	debug     net.Listener          // nil without --debug-listen
	schedule  *audit.Schedule       // nil without --audit-interval

	// checks are what /readyz asks beyond a certificate; Run adds the
	// informers' before it serves.
	checks []func() error
	// listeners are closed by close when New fails after opening them.
	listeners []net.Listener
}

// New validates o and builds the server: it reads the certificate and
// policy files, connects to the cluster and the store, and opens the
// listeners, but starts nothing. An error it returns for the options
// themselves is an *OptionError.
func New(ctx context.Context, o Options, log *slog.Logger) (_ *App, err error) {
	refs, err := o.validate()
	if err != nil {
		return nil, err
	}
	a := &App{opts: o, refs: refs, log: log, reloader: &policysource.Reloader{Interval: o.Policy.ReloadInterval, Log: log}}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	if o.TLS.SelfManagedCASecret == "" {
		if err := server.CheckFiles(o.TLS.CertFile, o.TLS.KeyFile); err != nil {
			return nil, err
		}
	}
	cfg, err := kubeConfig(o.Kubeconfig, o.InCluster, o.Version)
	if err != nil {
		return nil, err
	}
	if cfg != nil {
		if a.kube, err = kubernetes.NewForConfig(cfg); err != nil {
			return nil, err
		}
	}
	a.metrics = webhook.NewMetrics()
	e := NewEngine(o.Registry, o.Provenance, a.kube, a.metrics, log)
	a.engine = e
	if err := a.policies(cfg); err != nil {
		return nil, err
	}
	certs, err := a.certificates(cfg)
	if err != nil {
		return nil, err
	}
	if a.kube != nil {
		a.informers = informers.NewSharedInformerFactory(a.kube, 10*time.Minute)
		e.Namespaces = namespaceLabels{lister: a.informers.Core().V1().Namespaces().Lister(), client: a.kube}
	}
	if a.store, err = o.Store.Open(ctx); err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	observers, recorder, err := a.decisions(cfg, mux)
	if err != nil {
		return nil, err
	}
	// Before anything evaluates: an exceptions file wraps e.Policies,
	// which the audit Schedule compares selections with.
	if err := a.newReview(cfg, certs); err != nil {
		return nil, err
	}
	if err := a.newSchedule(cfg); err != nil {
		return nil, err
	}
	mux.Handle("/validate", &webhook.Handler{Evaluator: e, Metrics: a.metrics, Log: log, Observers: observers, Recorder: recorder})
	mux.Handle("/mutate", &webhook.Mutator{Evaluator: e, Log: log})
	mux.Handle("/metrics", a.metrics.Handler())
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, err
	}
	a.listeners = append(a.listeners, ln)
	if o.DebugListen != "" {
		if a.debug, err = net.Listen("tcp", o.DebugListen); err != nil {
			return nil, err
		}
		a.listeners = append(a.listeners, a.debug)
	}
	a.webhook = &server.Server{Listener: ln, Certificates: certs, Handler: mux,
		Ready: a.ready, DrainDelay: o.DrainDelay, Log: log, Metrics: a.metrics.Registry()}
	return a, nil
}

// NewEngine is the engine of serve, of a scan and of `buildguard check`,
// without its policies, namespaces and evidence: it looks images up with
// reg's client and verifies them with prov's verifier, measured by m
// unless it is nil, with the pull secrets of the pods in kube's cluster,
// or the docker config file outside a cluster (kube nil). A nil log
// discards.
func NewEngine(reg Registry, prov Provenance, kube kubernetes.Interface, m *webhook.Metrics, log *slog.Logger) *engine.Engine {
	var obs registry.Observer
	var measure prometheus.Registerer
	if m != nil {
		obs, measure = m, m.Registry()
	}
	e := &engine.Engine{
		Resolver:  reg.Client(obs),
		Keychains: registry.StaticKeychain{Auth: registry.DockerConfig()},
		Timeout:   reg.Timeout,
		Log:       log,
	}
	if kube != nil {
		e.Keychains = &registry.KubernetesKeychains{Client: kube}
	}
	e.Verifier = prov.Verifier(e.Resolver, measure)
	if v, ok := e.Verifier.(*provenance.Verifier); ok {
		v.Log = log // ClusterBuildPolicies' unusable trust files are reported here
	}
	return e
}

// policies sets up the engine's policy source.
func (a *App) policies(cfg *rest.Config) error {
	checkTrust := func(p *policy.Policy) error { return provenance.CheckTrust(p.Trust()) }
	if a.opts.policySource() == SourceFile {
		pf := &policysource.File{Path: a.opts.Policy.File, Log: a.log, Check: checkTrust}
		if err := pf.Load(); err != nil {
			return err
		}
		a.engine.Policies, a.file = pf, pf
		a.reloader.Add(pf, "policy not reloaded; the previous policy stays in force")
		return nil
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	a.crd = &policysource.CRD{Client: dyn, Log: a.log, Validate: checkTrust}
	if a.lease, err = newStatusLease(a.refs.statusLease, a.kube, a.log); err != nil {
		return err
	}
	if a.lease != nil {
		a.crd.Leading = a.lease.Leading
	}
	a.engine.Policies = a.crd
	return nil
}

// certificates returns the source of the serving certificate, the
// webhook's and the review UI's: the certificate files, or the
// self-managed CA's. It sets up the publishing of the CA.
func (a *App) certificates(cfg *rest.Config) (certtls.CertificateSource, error) {
	tls := a.opts.TLS
	var certs certtls.CertificateSource = &certtls.FileCertificateSource{
		CertPath: tls.CertFile, KeyPath: tls.KeyFile, UpdateInterval: server.DefaultCertReloadInterval}
	publish := &cluster.CABundle{Client: a.kube, Log: a.log}
	if tls.SelfManagedCASecret != "" {
		ns, name, err := a.refs.caSecret.resolve()
		if err != nil {
			return nil, err
		}
		certs = &certtls.DynamicSource{
			DNSNames: tls.DNSNames,
			Authority: &authority.DynamicAuthority{
				SecretNamespace: ns, SecretName: name, RESTConfig: cfg, CommonName: "buildguard-ca",
			},
		}
		publish.CA = cluster.SecretCA{Client: a.kube, Namespace: ns, Name: name}
		publish.Webhook = tls.WebhookConfiguration
	} else if tls.CAFile != "" {
		publish.CA = cluster.FileCA(tls.CAFile)
	}
	if tls.CAConfigMap != "" {
		var err error
		if publish.ConfigMapNamespace, publish.ConfigMapName, err = a.refs.caConfigMap.resolve(); err != nil {
			return nil, err
		}
	}
	if publish.Webhook != "" || publish.ConfigMapName != "" {
		a.publish = publish
	}
	return certs, nil
}

// decisions sets up who is told of decisions: every decision is counted;
// with a store it is recorded (a deny or would-deny before it is
// answered), and judged again when node evidence arrives late; in a
// cluster a deny or would-deny is posted as an Event. The node-report
// endpoints join mux.
func (a *App) decisions(cfg *rest.Config, mux *http.ServeMux) ([]decision.Observer, webhook.DecisionRecorder, error) {
	o := a.opts
	observers := []decision.Observer{a.metrics}
	if a.kube != nil {
		a.events = cluster.NewEvents(a.kube)
		observers = append(observers, &records.Notifier{Sink: a.events, Review: o.reviewURL()})
	}
	if a.store == nil {
		return observers, nil, nil
	}
	journal := o.Records.Journal
	if journal == "" && o.Store.SQLite != "" {
		journal = o.Store.SQLite + ".decisions.journal"
	}
	if journal == "" {
		// An emptyDir outlives container restarts; a volume that
		// outlives the pod is better, and --decision-journal names it.
		journal = filepath.Join(os.TempDir(), "buildguard.decisions.journal")
		a.log.Warn("decision records wait in a journal under the temporary directory; set --decision-journal to a volume that outlives the pod", "path", journal)
	}
	// A PostgreSQL commit is a round trip and the server's commit; a
	// local fsync is several times faster (docs/benchmark-results.md).
	journalFirst := o.Records.Commit == "journal" || o.Records.Commit == "" && o.Store.SQLite == ""
	rec, err := records.New(a.store, journal, records.WithQueueSize(o.Records.Queue), records.WithLogger(a.log),
		records.WithJournalFirst(journalFirst), records.WithRegisterer(a.metrics.Registry()))
	if err != nil {
		return nil, nil, err
	}
	a.recorder = rec
	a.engine.Evidence = a.store
	if a.kube == nil {
		a.log.Warn("node reports are not accepted outside a cluster: they are authenticated with TokenReview")
		return observers, rec, nil
	}
	late := retro.New(a.engine, a.events, a.metrics.Registry(), a.log)
	late.Records = rec // late findings join the decision records
	late.Review = o.reviewURL()
	observers = append(observers, late)
	reviews, err := ingest.NewReviewClient(cfg)
	if err != nil {
		return nil, nil, err
	}
	a.reports = &ingest.TokenReviewer{Client: reviews, Audiences: []string{o.Reports.Audience},
		Allowed: o.Reports.Reporters, Forwarders: o.Reports.Forwarders}
	im, err := ingest.NewMetrics(a.metrics.Registry(), ingest.Formats())
	if err != nil {
		return nil, nil, err
	}
	ih := &ingest.Handler{
		Metrics:       im,
		Store:         a.store,
		Auth:          a.reports,
		Formats:       ingest.Formats(),
		Rate:          rate.Limit(o.Reports.Rate),
		Burst:         max(1, int(2*o.Reports.Rate)),
		ForwarderRate: rate.Limit(o.Reports.ForwarderRate), ForwarderBurst: max(1, int(2*o.Reports.ForwarderRate)),
		OnReport: late.Report,
		Log:      a.log,
	}
	for path := range ih.Formats {
		mux.Handle(path, ih)
	}
	return observers, rec, nil
}

// newSchedule sets up the periodic audit scan, and the policy reports it
// writes.
func (a *App) newSchedule(cfg *rest.Config) error {
	o := a.opts.Audit
	if o.Interval == 0 {
		return nil
	}
	claim, err := newClaimer(a.refs.auditLease, a.kube)
	if err != nil {
		return err
	}
	m, err := audit.NewScheduleMetrics(a.metrics.Registry())
	if err != nil {
		return err
	}
	s := &audit.Scanner{Client: a.kube, Evaluator: a.engine, Concurrency: o.Concurrency, Log: a.log,
		ExcludeNamespaces: o.ExcludeNamespaces,
		// An owned object is covered by its owner only under the same
		// policies: those of the engine, with the exceptions file's.
		Policies: a.engine.Policies, NamespaceLabels: a.engine.Namespaces}
	if a.store != nil {
		s.Recorder = a.store
	}
	a.schedule = &audit.Schedule{Scanner: s, Every: o.Interval, Claim: claim, Ready: a.ready, Metrics: m, Log: a.log}
	reports, err := policyreport.NewWriter(o.PolicyReports, cfg, a.log)
	if err != nil {
		return err
	}
	if reports != nil {
		a.schedule.Completed = reports.Written
	}
	return nil
}

// ready reports whether the server can judge: its informers have synced.
func (a *App) ready() error {
	for _, c := range a.checks {
		if err := c(); err != nil {
			return err
		}
	}
	return nil
}

// Run serves until ctx ends, or until the webhook's listener fails, and
// then shuts down: the webhook drains (Options.DrainDelay) while the
// review UI and the loops stop and the status Lease is released; then
// the decision records are flushed, the store is closed and the last
// Events are posted. It returns the webhook's error, if any.
func (a *App) Run(ctx context.Context) error {
	defer a.close()
	// The webhook is the server: when it stops, for whatever reason,
	// everything else stops with it.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	if a.crd != nil {
		g.Go(func() error {
			a.crd.Run(ctx)
			return nil
		})
		a.checks = append(a.checks, func() error {
			if !a.crd.Synced() {
				return errors.New("policy informers not synced")
			}
			return nil
		})
		if a.lease != nil {
			g.Go(func() error { return a.runLease(ctx) })
		}
	}
	if a.informers != nil {
		synced := a.informers.Core().V1().Namespaces().Informer().HasSynced
		a.informers.Start(ctx.Done())
		a.checks = append(a.checks, func() error {
			if !synced() {
				return errors.New("namespace informer not synced")
			}
			return nil
		})
		g.Go(func() error {
			<-ctx.Done()
			a.informers.Shutdown()
			return nil
		})
	}
	if a.publish != nil {
		g.Go(func() error { return a.publish.Run(ctx) })
	}
	g.Go(func() error { return a.reloader.Run(ctx) })
	if a.store != nil {
		g.Go(func() error { return a.prune(ctx) })
	}
	if a.review != nil {
		a.review.run(ctx, g)
	}
	if a.schedule != nil {
		g.Go(func() error { return a.schedule.Run(ctx) })
	}
	if a.debug != nil {
		runDebug(ctx, g, a.debug)
	}
	g.Go(func() error {
		defer stop()
		return a.webhook.Run(ctx)
	})
	return g.Wait()
}

// runLease campaigns for the status Lease until ctx ends, and waits at
// most leaseReleaseWait after that for the Lease to be released.
func (a *App) runLease(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.lease.Run(ctx, a.crd.WriteStatus); err != nil {
			a.log.Error("status lease not run: policy status is not written", "error", err)
		}
	}()
	<-ctx.Done()
	t := clock.OrReal(a.clock).NewTimer(leaseReleaseWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C():
	}
	return nil
}

// prune applies retention every hour.
func (a *App) prune(ctx context.Context) error {
	keep, rows := a.opts.Records.Retention, a.opts.Records.RetentionRows
	clk := clock.OrReal(a.clock)
	t := clk.NewTicker(pruneInterval)
	defer t.Stop()
	for {
		n, err := a.store.Prune(ctx, clk.Now().Add(-keep), rows)
		if err != nil {
			a.log.Warn("store retention failed", "error", err)
		} else if n > 0 {
			a.log.Info("store retention", "deleted", n)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
	}
}

// close releases what New opened, in order: the node reports' token
// reviews in the background end; queued decision records are stored or
// journaled before the store closes; the Events posted last are flushed.
func (a *App) close() {
	for _, ln := range a.listeners {
		ln.Close() // already closed by a server that ran
	}
	if a.reports != nil {
		a.reports.Close()
	}
	if a.recorder != nil {
		a.recorder.Close()
	}
	if a.store != nil {
		a.store.Close()
	}
	if a.events != nil {
		a.events.Shutdown()
	}
}

// Addr is the webhook's address, with the port the listener got.
func (a *App) Addr() net.Addr { return a.webhook.Listener.Addr() }
