package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	certtls "github.com/cert-manager/cert-manager/pkg/server/tls"
	"github.com/go-logr/logr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/policysource"
	"buildguard.dev/buildguard/review"
	"buildguard.dev/buildguard/server"
)

// reviewFlags configure the web review UI (docs/review.md) and the
// exceptions file it grants into when policies come from a file.
type reviewFlags struct {
	listen         string
	tokenFile      string
	keyFile        string
	sessionTTL     time.Duration
	maxException   time.Duration
	exceptionsFile string
}

func (f *reviewFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.listen, "review-listen", "", "address to serve the web review UI on, over HTTPS with the webhook's certificate (default: off)")
	fs.StringVar(&f.tokenFile, "review-token-file", "", "without a cluster: the review UI's users, one a line as token,user,uid[,\"group1,group2\"] (kube-apiserver's token file format); every user may view and grant")
	fs.StringVar(&f.keyFile, "review-session-key-file", "", "file holding the key (at least 32 bytes) that signs review sessions; replicas behind one Service need the same (default: random, so sessions end at restart)")
	fs.DurationVar(&f.sessionTTL, "review-session-ttl", review.DefaultSessionTTL, "how long a review login lasts")
	fs.DurationVar(&f.maxException, "review-max-exception", review.DefaultMaxException, "the longest expiry of an exception granted in the review UI")
	fs.StringVar(&f.exceptionsFile, "exceptions-file", "", "with --policy-source=file: a YAML file of namespaced exceptions applied with the policy file; the review UI grants into it")
}

// reviewDeps is what serve has ready when the review UI starts.
type reviewDeps struct {
	engine         *engine.Engine
	source         string // policy source: file or crd
	cfg            *rest.Config
	kube           kubernetes.Interface
	store          evidence.Store
	certs          certtls.CertificateSource // nil: the certificate files
	certFile       string
	keyFile        string
	reloader       *policysource.Reloader // re-reads the exceptions file
	log            *slog.Logger
	exceptionsFile *policysource.ExceptionFile
}

// check validates the flags against what serve has.
func (f *reviewFlags) check(source string, inCluster bool) error {
	switch {
	case f.exceptionsFile != "" && source != "file":
		return &usageError{msg: "--exceptions-file goes with --policy-source=file; with crd, exceptions are BuildPolicyException resources"}
	case f.listen == "" && (f.tokenFile != "" || f.keyFile != ""):
		return &usageError{msg: "--review-token-file and --review-session-key-file need --review-listen"}
	case f.listen == "":
		return nil
	case inCluster && f.tokenFile != "":
		return &usageError{msg: "--review-token-file is for running without a cluster; in one, review users log in with Kubernetes tokens"}
	case !inCluster && f.tokenFile == "":
		return &usageError{msg: "--review-listen without a cluster needs --review-token-file"}
	case f.sessionTTL <= 0 || f.maxException <= 0:
		return &usageError{msg: "--review-session-ttl and --review-max-exception must be positive"}
	}
	return nil
}

// setupExceptions reads --exceptions-file and adds its exceptions to the
// engine's policies; d.reloader re-reads the file.
func (f *reviewFlags) setupExceptions(d *reviewDeps) error {
	if f.exceptionsFile == "" {
		return nil
	}
	xf, err := policysource.OpenExceptionFile(f.exceptionsFile)
	if err != nil {
		return err
	}
	d.exceptionsFile = xf
	d.engine.Policies = xf.Policies(d.engine.Policies)
	d.reloader.Add(xf, "exceptions file not reloaded; the exceptions read before stay in force")
	return nil
}

// startReview sets up the exceptions file and, with --review-listen,
// serves the review UI until ctx ends. Call it before the webhook serves:
// it may wrap d.engine's policies.
func (f *reviewFlags) start(ctx context.Context, d reviewDeps) error {
	if err := f.check(d.source, d.kube != nil); err != nil {
		return err
	}
	if err := f.setupExceptions(&d); err != nil {
		return err
	}
	if f.listen == "" {
		return nil
	}
	if d.store == nil {
		return &usageError{msg: "--review-listen needs a store of decision records (--store-sqlite or --store-postgres-dsn)"}
	}
	c := review.Config{Store: d.store, SessionTTL: f.sessionTTL, MaxException: f.maxException, Log: d.log}
	if f.keyFile != "" {
		k, err := os.ReadFile(f.keyFile)
		if err != nil {
			return fmt.Errorf("--review-session-key-file: %w", err)
		}
		c.Key = []byte(strings.TrimSpace(string(k)))
		if len(c.Key) < review.MinKeyLen {
			return fmt.Errorf("--review-session-key-file %s: %d bytes, want at least %d", f.keyFile, len(c.Key), review.MinKeyLen)
		}
	}
	if d.kube != nil {
		c.Authenticator = &review.TokenReviewer{Client: d.kube}
		c.Authorizer = &review.SubjectAccessReviewer{Client: d.kube}
	} else {
		st, err := review.ReadTokenFile(f.tokenFile)
		if err != nil {
			return err
		}
		c.Authenticator, c.Authorizer = st, review.AllowAll{}
	}
	switch {
	case d.source == "crd":
		dyn, err := dynamic.NewForConfig(d.cfg)
		if err != nil {
			return err
		}
		c.Granter = &review.ExceptionCreator{Client: dyn}
	case d.exceptionsFile != nil:
		c.Granter = d.exceptionsFile
	default:
		c.GrantOff = "policies come from a file and no --exceptions-file is set"
	}
	h, err := review.New(c)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", f.listen)
	if err != nil {
		return fmt.Errorf("--review-listen: %w", err)
	}
	src := d.certs
	if src == nil {
		// Files: a source of our own reading the same files; the
		// webhook's server starts its own.
		fsrc := &certtls.FileCertificateSource{CertPath: d.certFile, KeyPath: d.keyFile, UpdateInterval: server.DefaultCertReloadInterval}
		go func() {
			if err := fsrc.Start(logr.NewContext(ctx, logr.FromSlogHandler(d.log.Handler()))); err != nil && ctx.Err() == nil {
				d.log.Error("review UI: TLS certificate source stopped", "error", err)
			}
		}()
		src = fsrc
	}
	// A self-managed CA's source is started by the webhook's server; the
	// review UI only asks it for the current certificate.
	hs := &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: src.GetCertificate},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(d.log.Handler(), slog.LevelWarn),
	}
	go func() {
		d.log.Info("serving the review UI", "address", ln.Addr().String())
		if err := hs.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("review UI stopped", "error", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), server.DefaultShutdownTimeout)
		defer cancel()
		hs.Shutdown(sctx)
	}()
	return nil
}
