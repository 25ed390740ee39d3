// Package app builds buildguard's server (`buildguard serve`) and its
// one-off scan (`buildguard audit`) from options, and runs them. Options
// are serve's flags as values; Validate checks them without touching
// anything; New builds the webhook, the node-report endpoints, the review
// UI and the background loops from them; Run serves until its context
// ends, then shuts everything down in one order. ScanOptions and NewScan
// do the same for a scan, with the same engine. cmd/buildguard turns
// flags into options; this package holds no flags.
package app

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policyreport"
	"buildguard.dev/buildguard/provenance"
	"buildguard.dev/buildguard/records"
	"buildguard.dev/buildguard/registry"
)

// Options configure `buildguard serve`. Each field is the value of a flag
// of the command, named in its comment; the flags' defaults are the
// defaults. Errors about them name the flags.
type Options struct {
	// Listen is the webhook's HTTPS address (--listen).
	Listen string
	// DrainDelay is how long, on SIGTERM, the webhook keeps serving with
	// /readyz failing before it stops (--drain-delay).
	DrainDelay time.Duration
	// Kubeconfig is the kubeconfig of the cluster (--kubeconfig); when
	// empty, the pod's service account is used InCluster.
	Kubeconfig string
	// InCluster is whether the process runs in a pod
	// ($KUBERNETES_SERVICE_HOST is set).
	InCluster bool
	// Version is the program's version, in its Kubernetes user agent.
	Version string
	// DebugListen is a loopback address where net/http/pprof is served
	// over plain HTTP, for profiling the running process; "" (the
	// default) serves nothing (--debug-listen).
	DebugListen string

	TLS        TLSOptions
	Policy     PolicyOptions
	Registry   Registry
	Provenance Provenance
	Store      Store
	Records    RecordsOptions
	Reports    ReportsOptions
	Audit      AuditOptions
	Review     ReviewOptions
}

// TLSOptions say where the serving certificate comes from, and where its
// CA is published.
type TLSOptions struct {
	// CertFile and KeyFile are the PEM certificate and key, reloaded when
	// they change (--tls-cert-file, --tls-private-key-file).
	CertFile, KeyFile string
	// CAFile is the CA that signed CertFile, for CAConfigMap
	// (--tls-ca-file).
	CAFile string
	// SelfManagedCASecret is the [namespace/]name of the Secret that
	// holds a CA kept by buildguard, instead of the files
	// (--self-managed-ca-secret); DNSNames are the names of the
	// certificates it signs (--tls-dns-names).
	SelfManagedCASecret string
	DNSNames            []string
	// CAConfigMap is the [namespace/]name of a ConfigMap whose ca.crt is
	// kept equal to the CA (--ca-configmap).
	CAConfigMap string
	// WebhookConfiguration names the webhook configurations whose
	// caBundle the self-managed CA is kept in (--webhook-configuration).
	WebhookConfiguration string
}

// Policy sources of PolicyOptions.Source.
const (
	SourceFile = "file"
	SourceCRD  = "crd"
)

// PolicyOptions say where policies come from.
type PolicyOptions struct {
	// Source is SourceFile or SourceCRD; "" is SourceFile
	// (--policy-source).
	Source string
	// File is the policy file of SourceFile (--config).
	File string
	// ReloadInterval is how often the policy file and ExceptionsFile are
	// read again (--policy-reload-interval).
	ReloadInterval time.Duration
	// ExceptionsFile is a file of exceptions that goes with File, which
	// the review UI grants into (--exceptions-file).
	ExceptionsFile string
	// StatusLease is the [namespace/]name of the Lease that elects the
	// replica writing the status of the resources of SourceCRD; "" has
	// every replica write it (--status-lease).
	StatusLease string
}

// RecordsOptions say how decisions are recorded in the Store.
type RecordsOptions struct {
	// Journal is where records wait while the store cannot take them
	// (--decision-journal); the default is the SQLite file's name with
	// ".decisions.journal", and a file in the temporary directory with
	// PostgreSQL.
	Journal string
	// Queue is how many allow and warn records wait in memory
	// (--decision-queue).
	Queue int
	// Commit is where a deny or would-deny is made durable before it is
	// answered: "store" or "journal"; "" is store with SQLite, journal
	// with PostgreSQL (--decision-commit).
	Commit string
	// Retention is how long node evidence and decision records are kept
	// (--retention); RetentionRows caps the rows of each table, 0 for no
	// cap (--retention-rows).
	Retention     time.Duration
	RetentionRows int
}

// ReportsOptions say who may post node reports, and how often.
type ReportsOptions struct {
	// Reporters are the users that may post node reports for the node
	// their token is bound to (--reporters).
	Reporters []string
	// Forwarders are the users that may post node reports for any node
	// (--report-forwarders).
	Forwarders []string
	// Audience is the audience their tokens are bound to
	// (--report-audience).
	Audience string
	// Rate is how many reports a second each node may post, in bursts of
	// twice as many (--report-rate); ForwarderRate is the same for each
	// forwarder (--forwarder-report-rate). Both must be more than 0.
	Rate, ForwarderRate float64
}

// AuditOptions configure the periodic scan (audit.Schedule).
type AuditOptions struct {
	// Interval is how often every workload is scanned; 0 never
	// (--audit-interval).
	Interval time.Duration
	// Concurrency is how many workloads a scan judges at once
	// (--audit-concurrency).
	Concurrency int
	// ExcludeNamespaces are not judged (--audit-exclude-namespaces).
	ExcludeNamespaces []string
	// Lease is the [namespace/]name of the Lease in which replicas claim
	// scans (--audit-lease).
	Lease string
	// PolicyReports is the policy report API each complete scan writes
	// its reports to, where the API server serves its CRDs:
	// policyreport.OpenReports or policyreport.WGPolicy; "" or "none"
	// writes none (--audit-policy-reports).
	PolicyReports string
}

// ReviewOptions configure the web review UI.
type ReviewOptions struct {
	// Listen is its HTTPS address; "" turns it off (--review-listen).
	Listen string
	// TokenFile lists its users without a cluster (--review-token-file).
	TokenFile string
	// SessionKeyFile holds the key that signs sessions; the default is a
	// random key (--review-session-key-file).
	SessionKeyFile string
	// SessionTTL is how long a login lasts (--review-session-ttl);
	// MaxException is the longest expiry of a granted exception
	// (--review-max-exception).
	SessionTTL, MaxException time.Duration
	// URL is the UI's address as its users reach it, which Events link
	// decisions' pages under (--review-url; records.ParseReviewURL
	// checks it). It may be set without Listen: another replica, or a
	// proxy, serves the UI. The default links nothing.
	URL string
}

// OptionError is a mistake in the Options: a value out of range, or
// options that need or exclude each other. It is the user's to fix, and
// says which flags.
type OptionError struct{ Msg string }

func (e *OptionError) Error() string { return e.Msg }

func optionErrorf(format string, args ...any) error {
	return &OptionError{Msg: fmt.Sprintf(format, args...)}
}

// cluster reports whether the Options name a cluster to talk to.
func (o *Options) cluster() bool { return o.Kubeconfig != "" || o.InCluster }

// policySource is Policy.Source with its default.
func (o *Options) policySource() string {
	if o.Policy.Source == "" {
		return SourceFile
	}
	return o.Policy.Source
}

// Validate checks the Options without reading a file or the environment:
// what it refuses is an *OptionError. New checks the rest (files, the
// cluster) as it builds.
func (o *Options) Validate() error {
	_, err := o.validate()
	return err
}

// refs are the Options' "[namespace/]name" references, parsed; the zero
// objectRef where one is not used.
type refs struct {
	caSecret, caConfigMap, statusLease, auditLease objectRef
}

// validate is Validate, and returns the references it parsed, for New.
func (o *Options) validate() (r refs, err error) {
	tls, source := o.TLS, o.policySource()
	if c := o.Records.Commit; c != "" && c != "store" && c != "journal" {
		return r, optionErrorf("--decision-commit %q: want store or journal", c)
	}
	switch {
	case source != SourceFile && source != SourceCRD:
		return r, optionErrorf("--policy-source %q: want file or crd", source)
	case source == SourceFile && o.Policy.File == "":
		return r, optionErrorf("--config is required (or --policy-source=crd)")
	case tls.SelfManagedCASecret != "" && (tls.CertFile != "" || tls.KeyFile != ""):
		return r, optionErrorf("--self-managed-ca-secret and --tls-cert-file/--tls-private-key-file exclude each other")
	case tls.SelfManagedCASecret != "" && len(tls.DNSNames) == 0:
		return r, optionErrorf("--self-managed-ca-secret needs --tls-dns-names")
	case !(o.Reports.Rate > 0) || !(o.Reports.ForwarderRate > 0):
		return r, optionErrorf("--report-rate %v, --forwarder-report-rate %v: want more than 0", o.Reports.Rate, o.Reports.ForwarderRate)
	case o.DrainDelay < 0:
		return r, optionErrorf("--drain-delay %v: want 0 or more", o.DrainDelay)
	case tls.SelfManagedCASecret != "" && tls.CAFile != "":
		return r, optionErrorf("--tls-ca-file is for --tls-cert-file: the self-managed CA is published from its Secret")
	case tls.CAConfigMap != "" && tls.SelfManagedCASecret == "" && tls.CAFile == "":
		return r, optionErrorf("--ca-configmap needs the CA: --self-managed-ca-secret, or --tls-ca-file with --tls-cert-file")
	case !o.cluster() && (source == SourceCRD || tls.SelfManagedCASecret != "" || tls.CAConfigMap != ""):
		return r, optionErrorf("--policy-source=crd, --self-managed-ca-secret and --ca-configmap need a cluster: run inside one or pass --kubeconfig")
	}
	if r.caSecret, err = parseRef("--self-managed-ca-secret", tls.SelfManagedCASecret); err != nil {
		return r, err
	}
	if r.caConfigMap, err = parseRef("--ca-configmap", tls.CAConfigMap); err != nil {
		return r, err
	}
	if source == SourceCRD {
		if r.statusLease, err = parseRef("--status-lease", o.Policy.StatusLease); err != nil {
			return r, err
		}
	}
	if err := o.Store.validate(); err != nil {
		return r, err
	}
	if o.DebugListen != "" {
		if err := checkDebugListen(o.DebugListen); err != nil {
			return r, err
		}
	}
	if err := o.validateReview(); err != nil {
		return r, err
	}
	r.auditLease, err = o.validateAudit()
	return r, err
}

// reviewURL is Review.URL parsed; Validate checked it.
func (o *Options) reviewURL() records.ReviewURL {
	u, _ := records.ParseReviewURL(o.Review.URL)
	return u
}

func (o *Options) validateReview() error {
	r := o.Review
	if _, err := records.ParseReviewURL(r.URL); err != nil {
		return optionErrorf("--review-url %v", err)
	}
	switch {
	case o.Policy.ExceptionsFile != "" && o.policySource() != SourceFile:
		return optionErrorf("--exceptions-file goes with --policy-source=file; with crd, exceptions are BuildPolicyException resources")
	case r.Listen == "" && (r.TokenFile != "" || r.SessionKeyFile != ""):
		return optionErrorf("--review-token-file and --review-session-key-file need --review-listen")
	case r.Listen == "":
		return nil
	case o.cluster() && r.TokenFile != "":
		return optionErrorf("--review-token-file is for running without a cluster; in one, review users log in with Kubernetes tokens")
	case !o.cluster() && r.TokenFile == "":
		return optionErrorf("--review-listen without a cluster needs --review-token-file")
	case r.SessionTTL <= 0 || r.MaxException <= 0:
		return optionErrorf("--review-session-ttl and --review-max-exception must be positive")
	case !o.Store.configured():
		return optionErrorf("--review-listen needs a store of decision records (--store-sqlite or --store-postgres-dsn)")
	}
	return nil
}

// validateAudit checks the Audit options, and returns the Lease of the
// scans, which is required with an Interval.
func (o *Options) validateAudit() (objectRef, error) {
	a := o.Audit
	if r := a.PolicyReports; r != "" && r != "none" {
		if _, err := policyreport.ParseAPI(r); err != nil {
			return objectRef{}, optionErrorf("--audit-policy-reports: %v or none", err)
		}
	}
	switch {
	case a.Interval == 0:
		return objectRef{}, nil
	case a.Interval < audit.MinScheduleInterval:
		return objectRef{}, optionErrorf("--audit-interval %v: want 0 (off) or at least %v", a.Interval, audit.MinScheduleInterval)
	case a.Concurrency < 1:
		return objectRef{}, optionErrorf("--audit-concurrency %d: want at least 1", a.Concurrency)
	case !o.cluster():
		return objectRef{}, optionErrorf("--audit-interval needs a cluster: run inside one or pass --kubeconfig")
	case a.Lease == "":
		return objectRef{}, optionErrorf("--audit-lease %q: want [namespace/]name", a.Lease)
	}
	return parseRef("--audit-lease", a.Lease)
}

// objectRef is a flag's "[namespace/]name" value, parsed. The zero
// objectRef is no reference; an empty namespace is the pod's own, which
// resolve reads.
type objectRef struct {
	flag, namespace, name string
}

// parseRef parses flag's value s: "" is no reference.
func parseRef(flag, s string) (objectRef, error) {
	if s == "" {
		return objectRef{}, nil
	}
	r := objectRef{flag: flag, name: s}
	if ns, name, ok := strings.Cut(s, "/"); ok {
		if ns == "" || name == "" {
			return objectRef{}, optionErrorf("%s %q: want [namespace/]name", flag, s)
		}
		r.namespace, r.name = ns, name
	}
	return r, nil
}

// Registry configures the registry client that looks images up.
type Registry struct {
	// Timeout bounds one evaluation (--timeout).
	Timeout time.Duration
	// TagTTL is how long a tag's digest is reused (--tag-ttl).
	TagTTL time.Duration
	// MaxImages is how many images the digest cache keeps
	// (--cache-images).
	MaxImages int
	// PerRegistry bounds the concurrent requests to one registry
	// (--registry-concurrency).
	PerRegistry int
}

// Client returns a registry client configured by r, reporting to obs
// unless it is nil.
func (r Registry) Client(obs registry.Observer) *registry.Client {
	opts := []registry.Option{
		registry.WithTagTTL(r.TagTTL),
		registry.WithMaxImages(r.MaxImages),
		registry.WithPerRegistry(r.PerRegistry),
	}
	if obs != nil {
		opts = append(opts, registry.WithObserver(obs))
	}
	return registry.New(opts...)
}

// Provenance configures signature and attestation verification.
type Provenance struct {
	// NegativeTTL is how long finding no trusted signature is reused
	// (--provenance-negative-ttl); MaterialTTL how long what was fetched
	// and verified is (--provenance-ttl).
	NegativeTTL, MaterialTTL time.Duration
	// Concurrency bounds concurrent verifications
	// (--provenance-concurrency).
	Concurrency int
}

// Verifier returns a Verifier fetching through the engine's registry
// client, or nil when the resolver is not one (tests). With reg, it
// measures its verifications there.
func (p Provenance) Verifier(r engine.Resolver, reg prometheus.Registerer) engine.Verifier {
	c, ok := r.(*registry.Client)
	if !ok {
		return nil
	}
	opts := []provenance.Option{provenance.WithNegativeTTL(p.NegativeTTL), provenance.WithMaterialTTL(p.MaterialTTL),
		provenance.WithMaxConcurrent(p.Concurrency)}
	if reg != nil {
		opts = append(opts, provenance.WithRegisterer(reg))
	}
	return provenance.New(c, opts...)
}

// Store names the evidence store: SQLite at a path (embedded, one
// replica), or PostgreSQL (several replicas share it), or neither.
type Store struct {
	// SQLite is the SQLite file (--store-sqlite).
	SQLite string
	// PostgresDSN is the PostgreSQL DSN (--store-postgres-dsn, or
	// $BUILDGUARD_STORE_POSTGRES_DSN).
	PostgresDSN string
}

func (s Store) configured() bool { return s.SQLite != "" || s.PostgresDSN != "" }

func (s Store) validate() error {
	if s.SQLite != "" && s.PostgresDSN != "" {
		return optionErrorf("--store-sqlite and --store-postgres-dsn exclude each other")
	}
	return nil
}

// Open opens the store, or returns nil when none is named.
func (s Store) Open(ctx context.Context) (evidence.Store, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	switch {
	case s.PostgresDSN != "":
		st, err := evidence.OpenPostgres(ctx, s.PostgresDSN)
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		return st, nil
	case s.SQLite != "":
		st, err := evidence.OpenSQLite(ctx, s.SQLite)
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		return st, nil
	}
	return nil, nil
}
