package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"buildguard.dev/buildguard/app"
	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/cluster"
	"buildguard.dev/buildguard/ingest"
	"buildguard.dev/buildguard/internal/memlimit"
	"buildguard.dev/buildguard/policyreport"
	"buildguard.dev/buildguard/records"
	"buildguard.dev/buildguard/review"
)

// Defaults of serve's periodic scan.
const (
	// defaultAuditConcurrency is low: scans share the registry client's
	// per-registry connection limit with admission reviews.
	defaultAuditConcurrency = 2
)

// serve is `buildguard serve`: its flags become app.Options, and the app
// runs until ctx ends.
func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	o := app.Options{InCluster: inCluster(), Version: version}
	var rf registryFlags
	rf.register(fs)
	var pvf provenanceFlags
	pvf.register(fs)
	fs.StringVar(&o.Listen, "listen", ":8443", "address to serve HTTPS on")
	fs.DurationVar(&o.DrainDelay, "drain-delay", defaultDrainDelay(), "on SIGTERM, keep serving this long with /readyz failing before stopping, while the cluster takes the pod out of the Service's endpoints (default 5s in a pod, 0 elsewhere)")
	fs.StringVar(&o.TLS.CertFile, "tls-cert-file", "", "PEM certificate (chain); reloaded when it changes (required)")
	fs.StringVar(&o.TLS.KeyFile, "tls-private-key-file", "", "PEM private key; reloaded when it changes (required)")
	fs.StringVar(&o.DebugListen, "debug-listen", "", "loopback address (e.g. 127.0.0.1:6060) to serve net/http/pprof on, over plain HTTP, for profiling (default: off)")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig for namespace labels and pull secrets; in a cluster the pod's service account is used")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	logLevel := fs.String("log-level", "info", "lowest level logged: debug, info, warn or error; an allowed admission is logged at debug, every denied, would-be denied or warned one at info")
	fs.DurationVar(&o.Policy.ReloadInterval, "policy-reload-interval", 5*time.Second, "how often the policy file is checked for changes")
	fs.StringVar(&o.Policy.Source, "policy-source", "", `where policies come from: "file" (--config) or "crd" (ClusterBuildPolicy and BuildPolicyException resources); the default is file when --config is set`)
	fs.StringVar(&o.TLS.SelfManagedCASecret, "self-managed-ca-secret", "", "instead of TLS files, keep a CA in this Secret ([namespace/]name) and serve certificates it signs for --tls-dns-names")
	dnsNames := fs.String("tls-dns-names", "", "comma-separated DNS names of the serving certificate with --self-managed-ca-secret")
	fs.StringVar(&o.TLS.CAFile, "tls-ca-file", "", "PEM file of the CA that signed --tls-cert-file (cert-manager writes ca.crt beside it), published with --ca-configmap")
	fs.StringVar(&o.TLS.CAConfigMap, "ca-configmap", "", "[namespace/]name of a ConfigMap whose key ca.crt is kept equal to the CA of the serving certificate (the self-managed CA, or --tls-ca-file): the node agents' (in another namespace) check buildguard with it")
	var sf storeFlags
	sf.register(fs)
	reporters := fs.String("reporters", defaultReporters, "comma-separated users (service accounts) that may post node reports for the node their token is bound to")
	forwarders := fs.String("report-forwarders", "", "comma-separated users (service accounts) that may post node reports for any node, such as a central falcosidekick (none by default)")
	fs.StringVar(&o.Reports.Audience, "report-audience", "buildguard", "audience node reporters' tokens must be bound to")
	fs.Float64Var(&o.Reports.Rate, "report-rate", ingest.DefaultRate, "node reports a second each node may post (bursts of twice as many)")
	fs.Float64Var(&o.Reports.ForwarderRate, "forwarder-report-rate", ingest.DefaultForwarderRate, "node reports a second each of --report-forwarders may post (bursts of twice as many)")
	fs.DurationVar(&o.Records.Retention, "retention", 7*24*time.Hour, "how long node evidence and decision records are kept")
	fs.IntVar(&o.Records.RetentionRows, "retention-rows", 5_000_000, "at most this many rows per store table (0: no cap)")
	fs.StringVar(&o.Records.Journal, "decision-journal", "", "file where decision records wait while the store is unavailable, slow or busy (default: the --store-sqlite file + \".decisions.journal\"; with PostgreSQL: $TMPDIR/buildguard.decisions.journal)")
	fs.IntVar(&o.Records.Queue, "decision-queue", records.DefaultQueueSize, "allow and warn records kept in memory for the store before they go to the journal (a deny or would-deny is on disk before it is answered)")
	fs.StringVar(&o.Records.Commit, "decision-commit", "", `where a deny or would-deny is made durable before it is answered: "store" (a transaction for all those waiting; the journal when the store fails or is slow) or "journal" (an fsynced local file, moved to the store within about 100ms; the store when the journal fails); the default is store with SQLite, journal with PostgreSQL`)
	fs.StringVar(&o.Policy.StatusLease, "status-lease", cluster.DefaultStatusLease, "with --policy-source=crd, the Lease ([namespace/]name; the default namespace is the pod's) that elects the one replica writing the status of ClusterBuildPolicies and BuildPolicyExceptions (\"\": every replica writes)")
	fs.StringVar(&o.TLS.WebhookConfiguration, "webhook-configuration", "", "with --self-managed-ca-secret, the name of the Validating- and MutatingWebhookConfiguration whose caBundle is kept current")
	fs.DurationVar(&o.Audit.Interval, "audit-interval", 0, "scan every workload in the cluster this often (e.g. 6h) against current policy, recording would-deny decisions (0: never)")
	auditExclude := fs.String("audit-exclude-namespaces", defaultAuditExclusions, "comma-separated namespaces a periodic scan does not judge (\"\" for none)")
	fs.IntVar(&o.Audit.Concurrency, "audit-concurrency", defaultAuditConcurrency, "workloads a periodic scan judges at once; it shares registry connections with admission")
	fs.StringVar(&o.Audit.Lease, "audit-lease", audit.DefaultClaimLease, "the Lease ([namespace/]name; the default namespace is the pod's) in which replicas claim each periodic scan, so that one of them runs it")
	fs.StringVar(&o.Audit.PolicyReports, "audit-policy-reports", string(policyreport.OpenReports), "policy reports each complete periodic scan writes: openreports (openreports.io/v1alpha1 Report, ClusterReport), wgpolicyk8s (wgpolicyk8s.io/v1alpha2 PolicyReport, ClusterPolicyReport) or none; written only where the API server serves their CRDs")
	fs.StringVar(&o.Review.Listen, "review-listen", "", "address to serve the web review UI on, over HTTPS with the webhook's certificate (default: off)")
	fs.StringVar(&o.Review.TokenFile, "review-token-file", "", "without a cluster: the review UI's users, one a line as token,user,uid[,\"group1,group2\"] (kube-apiserver's token file format); every user may view and grant")
	fs.StringVar(&o.Review.SessionKeyFile, "review-session-key-file", "", "file holding the key (at least 32 bytes) that signs review sessions; replicas behind one Service need the same (default: random, so sessions end at restart)")
	fs.DurationVar(&o.Review.SessionTTL, "review-session-ttl", review.DefaultSessionTTL, "how long a review login lasts")
	fs.DurationVar(&o.Review.MaxException, "review-max-exception", review.DefaultMaxException, "the longest expiry of an exception granted in the review UI")
	fs.StringVar(&o.Review.URL, "review-url", "", "the review UI's address as its users reach it (through a Service, Ingress or proxy), such as https://buildguard.example: each deny and would-deny Event ends with a link to the decision's page (default: no links)")
	fs.StringVar(&o.Policy.ExceptionsFile, "exceptions-file", "", "with --policy-source=file: a YAML file of namespaced exceptions applied with the policy file; the review UI grants into it")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{msg: fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	o.Policy.File, o.Registry, o.Provenance, o.Store = rf.config, rf.Registry, pvf.Provenance, sf.options()
	if *dnsNames != "" {
		o.TLS.DNSNames = strings.Split(*dnsNames, ",")
	}
	o.Reports.Reporters = splitList(*reporters)
	o.Reports.Forwarders = splitList(*forwarders)
	o.Audit.ExcludeNamespaces = splitList(*auditExclude)
	if err := o.Validate(); err != nil {
		return asUsage(err)
	}
	log, err := newLogger(*logFormat, *logLevel, stderr)
	if err != nil {
		return err
	}
	// A container's memory limit, unless GOMEMLIMIT says otherwise:
	// the collector works harder near it instead of the kernel's OOM
	// killer ending the process.
	if ml, err := memlimit.Apply("/", memlimit.DefaultFraction); err != nil {
		log.Warn("memory limit of the cgroup unreadable; the Go runtime has none", "error", err)
	} else if ml.Source != "none" {
		log.Info("Go memory limit", "bytes", ml.Limit, "source", ml.Source, "container", ml.Container)
	}
	a, err := app.New(ctx, o, log)
	if err != nil {
		return asUsage(err)
	}
	return a.Run(ctx)
}

// asUsage turns an error in the options into a usage error: the mistake
// is on the command line.
func asUsage(err error) error {
	var oe *app.OptionError
	if errors.As(err, &oe) {
		return &usageError{msg: oe.Msg}
	}
	return err
}

// inCluster reports whether the process runs in a pod.
func inCluster() bool { return os.Getenv("KUBERNETES_SERVICE_HOST") != "" }

// defaultDrainDelay is 5s in a pod: the API server keeps sending
// admissions to a terminating pod until the EndpointSlice update reaches
// it, a second or two, more on a busy cluster; the Deployment's
// terminationGracePeriodSeconds (30) covers the delay, the requests in
// flight (server.DefaultShutdownTimeout) and the decision records'
// flush. Outside a pod nothing routes by endpoints, and a process that
// stops at once is what its user expects.
func defaultDrainDelay() time.Duration {
	if inCluster() {
		return 5 * time.Second
	}
	return 0
}

// defaultReporters is the node agent's service account of
// manifests/node-agent, in the agent's own namespace.
const defaultReporters = "system:serviceaccount:buildguard-node-agent:buildguard-node-agent"

// fixedLabels gives every namespace the same labels (check --mode).
type fixedLabels map[string]string

func (f fixedLabels) Labels(context.Context, string) (map[string]string, error) { return f, nil }

func podWithImage(img string) *corev1.PodSpec {
	return &corev1.PodSpec{Containers: []corev1.Container{{Name: "check", Image: img}}}
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
