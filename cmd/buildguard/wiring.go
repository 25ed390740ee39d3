package main

import (
	"flag"
	"time"

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
