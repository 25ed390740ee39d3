package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	certtls "github.com/cert-manager/cert-manager/pkg/server/tls"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"buildguard.dev/buildguard/policysource"
	"buildguard.dev/buildguard/review"
	"buildguard.dev/buildguard/server"
)

// reviewServer is the review UI's HTTPS server.
type reviewServer struct {
	hs  *http.Server
	ln  net.Listener
	log *slog.Logger
}

// newReview sets up the exceptions file and, with a review address, the
// review UI. certs is the webhook's certificate source: the webhook's
// server starts it, and the review UI asks it for the current
// certificate.
func (a *App) newReview(cfg *rest.Config, certs certtls.CertificateSource) error {
	o := a.opts
	var xf *policysource.ExceptionFile
	if o.Policy.ExceptionsFile != "" {
		var err error
		if xf, err = policysource.OpenExceptionFile(o.Policy.ExceptionsFile); err != nil {
			return err
		}
		a.engine.Policies = xf.Policies(a.engine.Policies)
		a.reloader.Add(xf, "exceptions file not reloaded; the exceptions read before stay in force")
	}
	r := o.Review
	if r.Listen == "" {
		return nil
	}
	c := review.Config{Store: a.store, SessionTTL: r.SessionTTL, MaxException: r.MaxException, Log: a.log}
	if r.SessionKeyFile != "" {
		k, err := os.ReadFile(r.SessionKeyFile)
		if err != nil {
			return fmt.Errorf("--review-session-key-file: %w", err)
		}
		c.Key = []byte(strings.TrimSpace(string(k)))
		if len(c.Key) < review.MinKeyLen {
			return fmt.Errorf("--review-session-key-file %s: %d bytes, want at least %d", r.SessionKeyFile, len(c.Key), review.MinKeyLen)
		}
	}
	if a.kube != nil {
		c.Authenticator = &review.TokenReviewer{Client: a.kube}
		c.Authorizer = &review.SubjectAccessReviewer{Client: a.kube}
	} else {
		st, err := review.ReadTokenFile(r.TokenFile)
		if err != nil {
			return err
		}
		c.Authenticator, c.Authorizer = st, review.AllowAll{}
	}
	switch {
	case o.policySource() == SourceCRD:
		dyn, err := dynamic.NewForConfig(cfg)
		if err != nil {
			return err
		}
		c.Granter = &review.ExceptionCreator{Client: dyn}
		c.Exceptions = &review.ClusterExceptions{Client: dyn}
	case xf != nil:
		c.Granter = xf
		c.Exceptions = &review.FileExceptions{File: xf, Policy: a.file.Policy}
	default:
		c.GrantOff = "policies come from a file and no --exceptions-file is set"
		c.Exceptions = &review.FileExceptions{Policy: a.file.Policy}
	}
	h, err := review.New(c)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", r.Listen)
	if err != nil {
		return fmt.Errorf("--review-listen: %w", err)
	}
	a.listeners = append(a.listeners, ln)
	rs := &reviewServer{ln: ln, log: a.log}
	rs.hs = &http.Server{
		Handler:           h,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.GetCertificate},
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	a.review = rs
	return nil
}

// run serves the review UI in g until ctx ends, then shuts it down. A
// review UI that fails is logged; the webhook goes on.
func (rs *reviewServer) run(ctx context.Context, g *errgroup.Group) {
	g.Go(func() error {
		rs.log.Info("serving the review UI", "address", rs.ln.Addr().String())
		served := make(chan error, 1)
		go func() { served <- rs.hs.ServeTLS(rs.ln, "", "") }()
		select {
		case err := <-served:
			if !errors.Is(err, http.ErrServerClosed) {
				rs.log.Error("review UI stopped", "error", err)
			}
			return nil
		case <-ctx.Done():
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), server.DefaultShutdownTimeout)
		defer cancel()
		rs.hs.Shutdown(sctx)
		<-served
		return nil
	})
}
