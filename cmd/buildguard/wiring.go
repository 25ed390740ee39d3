package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"buildguard.dev/buildguard/evidence"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/registry"
)

// registryFlags are the flags serve and check share.
type registryFlags struct {
	config      string
	timeout     time.Duration
	tagTTL      time.Duration
	maxImages   int
	perRegistry int
}

func (r *registryFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.config, "config", "", "policy file (required)")
	fs.DurationVar(&r.timeout, "timeout", engine.DefaultTimeout, "deadline for one evaluation; keep it below the webhook's timeoutSeconds")
	fs.DurationVar(&r.tagTTL, "tag-ttl", registry.DefaultTagTTL, "how long a tag → digest resolution is reused (0 disables)")
	fs.IntVar(&r.maxImages, "cache-images", registry.DefaultMaxImages, "images kept in the digest cache")
	fs.IntVar(&r.perRegistry, "registry-concurrency", registry.DefaultPerRegistry, "concurrent requests to one registry")
}

func (r *registryFlags) client(obs registry.Observer) *registry.Client {
	opts := []registry.Option{
		registry.WithTagTTL(r.tagTTL),
		registry.WithMaxImages(r.maxImages),
		registry.WithPerRegistry(r.perRegistry),
	}
	if obs != nil {
		opts = append(opts, registry.WithObserver(obs))
	}
	return registry.New(opts...)
}

// storeFlags choose the evidence store: SQLite at a path (embedded, one
// replica), or PostgreSQL (several replicas share it).
type storeFlags struct {
	sqlite      string
	postgresDSN string
}

// postgresDSNEnv keeps the DSN, which holds a password, out of the
// process's arguments.
const postgresDSNEnv = "BUILDGUARD_STORE_POSTGRES_DSN"

func (s *storeFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.sqlite, "store-sqlite", "", "SQLite file of node evidence and decision records (the embedded store)")
	fs.StringVar(&s.postgresDSN, "store-postgres-dsn", "", "PostgreSQL DSN of the store, for several replicas (store.postgres.dsn; or $"+postgresDSNEnv+")")
}

// open returns the configured store, or nil when none is.
func (s *storeFlags) open(ctx context.Context) (evidence.Store, error) {
	dsn := s.postgresDSN
	if dsn == "" {
		dsn = os.Getenv(postgresDSNEnv)
	}
	switch {
	case dsn != "" && s.sqlite != "":
		return nil, &usageError{msg: "--store-sqlite and --store-postgres-dsn exclude each other"}
	case dsn != "":
		st, err := evidence.OpenPostgres(ctx, dsn)
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		return st, nil
	case s.sqlite != "":
		st, err := evidence.OpenSQLite(ctx, s.sqlite)
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		return st, nil
	}
	return nil, nil
}

// newLogger returns the logger of --log-format: "json" (for log
// collectors) or "text", writing to w.
func newLogger(format string, w io.Writer) (*slog.Logger, error) {
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, nil)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, nil)), nil
	}
	return nil, &usageError{msg: fmt.Sprintf("--log-format %q: want json or text", format)}
}
