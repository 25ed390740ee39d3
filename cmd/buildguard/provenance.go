package main

import (
	"flag"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/provenance"
	"buildguard.dev/buildguard/registry"
)

// provenanceFlags configure signature and attestation verification.
type provenanceFlags struct {
	negativeTTL time.Duration
	materialTTL time.Duration
	concurrent  int
	// reg, when set, receives the verifier's metrics (serve).
	reg prometheus.Registerer
}

func (f *provenanceFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&f.negativeTTL, "provenance-negative-ttl", provenance.DefaultNegativeTTL, "how long finding no trusted signature or attestation for a digest is reused, so a signature added later is seen soon")
	fs.DurationVar(&f.materialTTL, "provenance-ttl", provenance.DefaultMaterialTTL, "how long signatures and attestations fetched for a digest, and positive verification results, are reused")
	fs.IntVar(&f.concurrent, "provenance-concurrency", provenance.DefaultMaxConcurrent, "concurrent signature verifications")
}

// verifier returns a Verifier fetching through the engine's registry
// client, or nil when the resolver is not one (tests).
func (f *provenanceFlags) verifier(r engine.Resolver) engine.Verifier {
	c, ok := r.(*registry.Client)
	if !ok {
		return nil
	}
	opts := []provenance.Option{provenance.WithNegativeTTL(f.negativeTTL), provenance.WithMaterialTTL(f.materialTTL),
		provenance.WithMaxConcurrent(f.concurrent)}
	if f.reg != nil {
		opts = append(opts, provenance.WithRegisterer(f.reg))
	}
	return provenance.New(c, opts...)
}
