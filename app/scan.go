package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/policyreport"
	"buildguard.dev/buildguard/policysource"
	"buildguard.dev/buildguard/provenance"
)

// policySyncTimeout bounds the wait for ClusterBuildPolicies and
// BuildPolicyExceptions to be read with SourceCRD.
const policySyncTimeout = 30 * time.Second

// ScanOptions configure `buildguard audit`, one scan of the cluster's
// workloads. Each field is the value of a flag of the command, named in
// its comment; the flags' defaults are the defaults. Errors about them
// name the flags.
type ScanOptions struct {
	// Kubeconfig (--kubeconfig) and Context (--context) name the
	// cluster as kubectl does: "" is $KUBECONFIG, else ~/.kube/config,
	// else the pod's service account, in the current context.
	Kubeconfig, Context string
	// Version is the program's version, in its Kubernetes user agent.
	Version string
	// PolicySource is SourceFile or SourceCRD; "" is SourceFile
	// (--policy-source). PolicyFile is the policy file of SourceFile
	// (--config).
	PolicySource, PolicyFile string
	// Namespaces are the namespaces scanned; none is all (--namespace).
	// ExcludeNamespaces are not judged (--exclude-namespaces).
	Namespaces, ExcludeNamespaces []string
	// Concurrency is how many workloads are judged at once
	// (--concurrency).
	Concurrency int
	// PolicyReports is the policy report API the scan's reports are
	// written to: policyreport.OpenReports or policyreport.WGPolicy; ""
	// or "none" writes none (--policy-reports).
	PolicyReports string

	Registry   Registry
	Provenance Provenance
	Store      Store
}

// Validate checks the ScanOptions without reading a file or the
// environment: what it refuses is an *OptionError.
func (o *ScanOptions) Validate() error {
	source := o.PolicySource
	if source == "" {
		source = SourceFile
	}
	switch {
	case source != SourceFile && source != SourceCRD:
		return optionErrorf("--policy-source %q: want file or crd", source)
	case source == SourceFile && o.PolicyFile == "":
		return optionErrorf("--config is required (or --policy-source=crd)")
	case source == SourceCRD && o.PolicyFile != "":
		return optionErrorf("--config and --policy-source=crd exclude each other")
	case o.Concurrency < 1:
		return optionErrorf("--concurrency %d: want at least 1", o.Concurrency)
	}
	if r := o.PolicyReports; r != "" && r != "none" {
		if _, err := policyreport.ParseAPI(r); err != nil {
			return optionErrorf("--policy-reports: %v or none", err)
		}
	}
	return o.Store.validate()
}

// Scan is `buildguard audit`, built: the engine serve builds, judging
// against a policy file or the cluster's policies, and the store and the
// policy report API the scan writes to.
type Scan struct {
	scanner *audit.Scanner
	reports *policyreport.Writer // nil: none asked for
	store   evidence.Store       // nil without one
	// stop stops reading the cluster's policies, and waits; nil with a
	// policy file.
	stop func()
}

// NewScan validates o and builds the scan: it connects to the cluster,
// reads the policies (the cluster's within policySyncTimeout) and opens
// the store. An error it returns for the options themselves is an
// *OptionError. Close releases what it holds.
func NewScan(ctx context.Context, o ScanOptions, log *slog.Logger) (_ *Scan, err error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	cfg, err := scanKubeConfig(o.Kubeconfig, o.Context, o.Version)
	if err != nil {
		return nil, err
	}
	s := &Scan{}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()
	if s.reports, err = policyreport.NewWriter(o.PolicyReports, cfg, log); err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	e := NewEngine(o.Registry, o.Provenance, kube, nil, log)
	e.Namespaces = &namespaceCache{client: kube}
	if o.PolicySource == SourceCRD {
		if e.Policies, err = s.clusterPolicies(ctx, cfg, log); err != nil {
			return nil, err
		}
	} else {
		p, err := policy.ReadFile(o.PolicyFile)
		if err != nil {
			return nil, err
		}
		if err := provenance.CheckTrust(p.Trust()); err != nil {
			return nil, fmt.Errorf("policy %s: %w", o.PolicyFile, err)
		}
		e.Policies = engine.PolicyFunc(func() *policy.Policy { return p })
	}
	if s.store, err = o.Store.Open(ctx); err != nil {
		return nil, err
	}
	s.scanner = &audit.Scanner{Client: kube, Evaluator: e, Namespaces: o.Namespaces, ExcludeNamespaces: o.ExcludeNamespaces,
		Concurrency: o.Concurrency, Log: log, Policies: e.Policies, NamespaceLabels: e.Namespaces}
	if s.store != nil {
		e.Evidence = s.store
		s.scanner.Recorder = s.store
	}
	return s, nil
}

// clusterPolicies reads the ClusterBuildPolicies and
// BuildPolicyExceptions until Close.
func (s *Scan) clusterPolicies(ctx context.Context, cfg *rest.Config, log *slog.Logger) (engine.Policies, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	// The scan reads policies; whether they are accepted is the
	// server's to say: a trust file missing here must not mark a policy
	// Invalid in the cluster.
	src := &policysource.CRD{Client: readOnly{dyn}, Log: log,
		Validate: func(p *policy.Policy) error { return provenance.CheckTrust(p.Trust()) }}
	ctx, cancel := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		src.Run(ctx)
	}()
	s.stop = func() {
		cancel()
		<-ran
	}
	if err := waitSynced(ctx, src.Synced, policySyncTimeout); err != nil {
		return nil, fmt.Errorf("reading ClusterBuildPolicies and BuildPolicyExceptions: %w", err)
	}
	return src, nil
}

// Run scans the cluster once, telling progress how far it is (nil: no
// one). It returns the report with the error of a scan that judged some
// workloads and failed for others, as audit.Scanner.Scan does.
func (s *Scan) Run(ctx context.Context, progress func(audit.Progress)) (*audit.Report, error) {
	s.scanner.Progress = progress
	return s.scanner.Scan(ctx)
}

// Recorded reports whether the verdicts are recorded in a store.
func (s *Scan) Recorded() bool { return s.store != nil }

// WriteReports writes r's policy reports to the API that
// ScanOptions.PolicyReports names; written is false when it names none.
func (s *Scan) WriteReports(ctx context.Context, r *audit.Report) (st policyreport.Stats, written bool, err error) {
	if s.reports == nil {
		return st, false, nil
	}
	st, err = s.reports.Write(ctx, r)
	return st, err == nil, err
}

// Close stops reading the cluster's policies and closes the store.
func (s *Scan) Close() {
	if s.stop != nil {
		s.stop()
	}
	if s.store != nil {
		s.store.Close()
	}
}

// scanKubeConfig loads a kubeconfig as kubectl does: path, else
// $KUBECONFIG, else ~/.kube/config, else the pod's service account.
func scanKubeConfig(path, kubeContext, version string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	cfg.UserAgent = "buildguard-audit/" + version
	// A scan lists in pages and reads each namespace's labels and pull
	// secrets once; client-go's default of 5 requests/s would make a
	// cluster of many namespaces wait on the client, not the server.
	cfg.QPS, cfg.Burst = 50, 100
	return cfg, nil
}

// waitSynced waits until synced reports true, for at most timeout.
func waitSynced(ctx context.Context, synced func() bool, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for !synced() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("not synced: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// namespaceCache reads each namespace's labels from the API server once
// per scan.
type namespaceCache struct {
	client kubernetes.Interface
	mu     sync.Mutex
	labels map[string]map[string]string
}

func (n *namespaceCache) Labels(ctx context.Context, ns string) (map[string]string, error) {
	n.mu.Lock()
	l, ok := n.labels[ns]
	n.mu.Unlock()
	if ok {
		return l, nil
	}
	o, err := n.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.labels == nil {
		n.labels = map[string]map[string]string{}
	}
	n.labels[ns] = o.Labels
	return o.Labels, nil
}

// errReadOnly is what a status write through readOnly returns.
var errReadOnly = errors.New("buildguard audit does not write to the cluster")

// readOnly is a dynamic client that refuses status writes, the only
// writes policysource.CRD makes.
type readOnly struct{ dynamic.Interface }

func (r readOnly) Resource(gvr schema.GroupVersionResource) dynamic.NamespaceableResourceInterface {
	return readOnlyResource{r.Interface.Resource(gvr)}
}

type readOnlyResource struct {
	dynamic.NamespaceableResourceInterface
}

func (r readOnlyResource) Namespace(ns string) dynamic.ResourceInterface {
	return readOnlyNamespaced{r.NamespaceableResourceInterface.Namespace(ns)}
}

func (readOnlyResource) UpdateStatus(context.Context, *unstructured.Unstructured, metav1.UpdateOptions) (*unstructured.Unstructured, error) {
	return nil, errReadOnly
}

type readOnlyNamespaced struct{ dynamic.ResourceInterface }

func (readOnlyNamespaced) UpdateStatus(context.Context, *unstructured.Unstructured, metav1.UpdateOptions) (*unstructured.Unstructured, error) {
	return nil, errReadOnly
}
