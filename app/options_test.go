package app

import (
	"errors"
	"math"
	"testing"
	"time"
)

// valid is a file-policy server without a cluster, with the fields the
// flags default.
func valid() Options {
	return Options{
		Listen:  ":8443",
		TLS:     TLSOptions{CertFile: "tls.crt", KeyFile: "tls.key"},
		Policy:  PolicyOptions{File: "policy.yaml", ReloadInterval: 5 * time.Second, StatusLease: "buildguard-status"},
		Audit:   AuditOptions{Concurrency: 2, Lease: "buildguard-audit"},
		Review:  ReviewOptions{SessionTTL: time.Hour, MaxException: 30 * 24 * time.Hour},
		Reports: ReportsOptions{Audience: "buildguard", Rate: 20, ForwarderRate: 200},
	}
}

// TestValidate: every mistake Validate refuses, without files or a
// cluster, in the words serve's users see.
func TestValidate(t *testing.T) {
	inCluster := func(o *Options) { o.Kubeconfig = "kubeconfig" }
	for _, tc := range []struct {
		name string
		mod  func(*Options)
		want string // "" is valid
	}{
		{"file policy", func(*Options) {}, ""},
		{"crd policy in a cluster", func(o *Options) { inCluster(o); o.Policy.Source, o.Policy.File = "crd", "" }, ""},
		{"in a pod", func(o *Options) { o.InCluster = true; o.Policy.Source = "crd" }, ""},
		{"unknown source", func(o *Options) { o.Policy.Source = "git" }, `--policy-source "git": want file or crd`},
		{"policy reports", func(o *Options) { o.Audit.PolicyReports = "wgpolicyk8s" }, ""},
		{"no policy reports", func(o *Options) { o.Audit.PolicyReports = "none" }, ""},
		{"unknown policy reports", func(o *Options) { o.Audit.PolicyReports = "kyverno" },
			`--audit-policy-reports: policy report API "kyverno": want openreports or wgpolicyk8s or none`},
		{"no policy file", func(o *Options) { o.Policy.File = "" }, "--config is required (or --policy-source=crd)"},
		{"bad commit", func(o *Options) { o.Records.Commit = "disk" }, `--decision-commit "disk": want store or journal`},
		{"CA and files", func(o *Options) { inCluster(o); o.TLS.SelfManagedCASecret = "ca" }, "--self-managed-ca-secret and --tls-cert-file/--tls-private-key-file exclude each other"},
		{"CA without names", func(o *Options) { inCluster(o); o.TLS = TLSOptions{SelfManagedCASecret: "ca"} }, "--self-managed-ca-secret needs --tls-dns-names"},
		{"self-managed CA", func(o *Options) {
			inCluster(o)
			o.TLS = TLSOptions{SelfManagedCASecret: "buildguard-system/ca", DNSNames: []string{"buildguard.buildguard-system.svc"}, CAConfigMap: "ca"}
		}, ""},
		{"bad CA secret", func(o *Options) {
			inCluster(o)
			o.TLS = TLSOptions{SelfManagedCASecret: "buildguard-system/", DNSNames: []string{"b"}}
		}, `--self-managed-ca-secret "buildguard-system/": want [namespace/]name`},
		{"no report rate", func(o *Options) { o.Reports.Rate = 0 }, "--report-rate 0, --forwarder-report-rate 200: want more than 0"},
		{"negative forwarder rate", func(o *Options) { o.Reports.ForwarderRate = -1 }, "--report-rate 20, --forwarder-report-rate -1: want more than 0"},
		{"NaN report rate", func(o *Options) { o.Reports.Rate = math.NaN() }, "--report-rate NaN, --forwarder-report-rate 200: want more than 0"},
		{"negative drain", func(o *Options) { o.DrainDelay = -time.Second }, "--drain-delay -1s: want 0 or more"},
		{"review URL", func(o *Options) { o.Review.URL = "https://buildguard.example/review/" }, ""},
		{"review URL without a scheme", func(o *Options) { o.Review.URL = "buildguard.example" }, `--review-url "buildguard.example": want an absolute https:// URL`},
		{"debug on loopback", func(o *Options) { o.DebugListen = "127.0.0.1:6060" }, ""},
		{"debug on IPv6 loopback", func(o *Options) { o.DebugListen = "[::1]:6060" }, ""},
		{"debug on localhost", func(o *Options) { o.DebugListen = "localhost:0" }, ""},
		{"debug on every address", func(o *Options) { o.DebugListen = ":6060" }, `--debug-listen ":6060": want a loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT); profiles are not for the network`},
		{"debug on a pod's address", func(o *Options) { o.DebugListen = "10.0.0.5:6060" }, `--debug-listen "10.0.0.5:6060": want a loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT); profiles are not for the network`},
		{"debug without a port", func(o *Options) { o.DebugListen = "127.0.0.1" }, `--debug-listen "127.0.0.1": address 127.0.0.1: missing port in address`},
		{"CA file with CA secret", func(o *Options) {
			inCluster(o)
			o.TLS = TLSOptions{SelfManagedCASecret: "ca", DNSNames: []string{"b"}, CAFile: "ca.crt"}
		}, "--tls-ca-file is for --tls-cert-file: the self-managed CA is published from its Secret"},
		{"ConfigMap without a CA", func(o *Options) { inCluster(o); o.TLS.CAConfigMap = "ca" }, "--ca-configmap needs the CA: --self-managed-ca-secret, or --tls-ca-file with --tls-cert-file"},
		{"bad ConfigMap", func(o *Options) { inCluster(o); o.TLS.CAFile, o.TLS.CAConfigMap = "ca.crt", "/ca" }, `--ca-configmap "/ca": want [namespace/]name`},
		{"crd without a cluster", func(o *Options) { o.Policy.Source = "crd" }, "--policy-source=crd, --self-managed-ca-secret and --ca-configmap need a cluster: run inside one or pass --kubeconfig"},
		{"bad status lease", func(o *Options) { inCluster(o); o.Policy.Source, o.Policy.StatusLease = "crd", "ns/" }, `--status-lease "ns/": want [namespace/]name`},
		{"status lease unused with a file", func(o *Options) { o.Policy.StatusLease = "ns/" }, ""},
		{"two stores", func(o *Options) { o.Store = Store{SQLite: "a.db", PostgresDSN: "postgres://"} }, "--store-sqlite and --store-postgres-dsn exclude each other"},

		{"exceptions file with crd", func(o *Options) { inCluster(o); o.Policy.Source, o.Policy.ExceptionsFile = "crd", "x.yaml" }, "--exceptions-file goes with --policy-source=file; with crd, exceptions are BuildPolicyException resources"},
		{"token file without the UI", func(o *Options) { o.Review.TokenFile = "tokens.csv" }, "--review-token-file and --review-session-key-file need --review-listen"},
		{"review UI", func(o *Options) { o.Review.Listen, o.Review.TokenFile, o.Store.SQLite = ":8444", "tokens.csv", "a.db" }, ""},
		{"token file in a cluster", func(o *Options) {
			inCluster(o)
			o.Review.Listen, o.Review.TokenFile, o.Store.SQLite = ":8444", "tokens.csv", "a.db"
		}, "--review-token-file is for running without a cluster; in one, review users log in with Kubernetes tokens"},
		{"no users without a cluster", func(o *Options) { o.Review.Listen, o.Store.SQLite = ":8444", "a.db" }, "--review-listen without a cluster needs --review-token-file"},
		{"no session TTL", func(o *Options) {
			o.Review.Listen, o.Review.TokenFile, o.Store.SQLite = ":8444", "tokens.csv", "a.db"
			o.Review.SessionTTL = 0
		}, "--review-session-ttl and --review-max-exception must be positive"},
		{"review UI without a store", func(o *Options) { o.Review.Listen, o.Review.TokenFile = ":8444", "tokens.csv" }, "--review-listen needs a store of decision records (--store-sqlite or --store-postgres-dsn)"},

		{"audit scans", func(o *Options) { inCluster(o); o.Audit.Interval = time.Hour }, ""},
		{"audit too often", func(o *Options) { inCluster(o); o.Audit.Interval = time.Second }, "--audit-interval 1s: want 0 (off) or at least 1m0s"},
		{"audit concurrency", func(o *Options) { inCluster(o); o.Audit.Interval, o.Audit.Concurrency = time.Hour, 0 }, "--audit-concurrency 0: want at least 1"},
		{"audit without a cluster", func(o *Options) { o.Audit.Interval = time.Hour }, "--audit-interval needs a cluster: run inside one or pass --kubeconfig"},
		{"audit lease without namespace", func(o *Options) { inCluster(o); o.Audit.Interval, o.Audit.Lease = time.Hour, "/buildguard-audit" }, `--audit-lease "/buildguard-audit": want [namespace/]name`},
		{"audit lease without name", func(o *Options) { inCluster(o); o.Audit.Interval, o.Audit.Lease = time.Hour, "buildguard-system/" }, `--audit-lease "buildguard-system/": want [namespace/]name`},
		{"no audit lease", func(o *Options) { inCluster(o); o.Audit.Interval, o.Audit.Lease = time.Hour, "" }, `--audit-lease "": want [namespace/]name`},
	} {
		o := valid()
		tc.mod(&o)
		err := o.Validate()
		got := ""
		if err != nil {
			got = err.Error()
			var oe *OptionError
			if !errors.As(err, &oe) {
				t.Errorf("%s: Validate() = %T, want an *OptionError", tc.name, err)
			}
		}
		if got != tc.want {
			t.Errorf("%s: Validate() = %q, want %q", tc.name, got, tc.want)
		}
	}
}

// TestParseRef: the "[namespace/]name" references of the Options, parsed
// once by Validate.
func TestParseRef(t *testing.T) {
	for _, tc := range []struct {
		in, ns, name, err string
	}{
		{"", "", "", ""},
		{"buildguard-status", "", "buildguard-status", ""},
		{"buildguard-system/buildguard-status", "buildguard-system", "buildguard-status", ""},
		{"a/b/c", "a", "b/c", ""},
		{"/buildguard-status", "", "", `--status-lease "/buildguard-status": want [namespace/]name`},
		{"buildguard-system/", "", "", `--status-lease "buildguard-system/": want [namespace/]name`},
	} {
		r, err := parseRef("--status-lease", tc.in)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if r.namespace != tc.ns || r.name != tc.name || got != tc.err {
			t.Errorf("parseRef(%q) = %q/%q, %q; want %q/%q, %q", tc.in, r.namespace, r.name, got, tc.ns, tc.name, tc.err)
		}
	}
	o := valid()
	o.Kubeconfig, o.Policy.Source, o.Policy.StatusLease = "kubeconfig", "crd", "buildguard-system/buildguard-status"
	o.Audit.Interval, o.Audit.Lease = time.Hour, "buildguard-audit"
	r, err := o.validate()
	if err != nil {
		t.Fatal(err)
	}
	want := refs{statusLease: objectRef{flag: "--status-lease", namespace: "buildguard-system", name: "buildguard-status"},
		auditLease: objectRef{flag: "--audit-lease", name: "buildguard-audit"}}
	if r != want {
		t.Errorf("validate() = %+v, want %+v", r, want)
	}
}
