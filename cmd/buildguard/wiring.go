package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"buildguard.dev/buildguard/app"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/registry"
)

// registryFlags are the flags serve, check and audit share.
type registryFlags struct {
	config string
	app.Registry
}

func (r *registryFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.config, "config", "", "policy file (required)")
	fs.DurationVar(&r.Timeout, "timeout", engine.DefaultTimeout, "deadline for one evaluation; keep it below the webhook's timeoutSeconds")
	fs.DurationVar(&r.TagTTL, "tag-ttl", registry.DefaultTagTTL, "how long a tag → digest resolution is reused (0 disables)")
	fs.IntVar(&r.MaxImages, "cache-images", registry.DefaultMaxImages, "images kept in the digest cache")
	fs.IntVar(&r.PerRegistry, "registry-concurrency", registry.DefaultPerRegistry, "concurrent requests to one registry")
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

// options returns the store the flags name, the DSN from the environment
// unless --store-postgres-dsn is given.
func (s *storeFlags) options() app.Store {
	dsn := s.postgresDSN
	if dsn == "" {
		dsn = os.Getenv(postgresDSNEnv)
	}
	return app.Store{SQLite: s.sqlite, PostgresDSN: dsn}
}

// open returns the configured store, or nil when none is.
func (s *storeFlags) open(ctx context.Context) (evidence.Store, error) {
	st, err := s.options().Open(ctx)
	return st, asUsage(err)
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
