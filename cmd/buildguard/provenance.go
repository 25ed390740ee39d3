package main

import (
	"flag"

	"buildguard.dev/buildguard/app"
	"buildguard.dev/buildguard/provenance"
)

// provenanceFlags configure signature and attestation verification.
type provenanceFlags struct {
	app.Provenance
}

func (f *provenanceFlags) register(fs *flag.FlagSet) {
	fs.DurationVar(&f.NegativeTTL, "provenance-negative-ttl", provenance.DefaultNegativeTTL, "how long finding no trusted signature or attestation for a digest is reused, so a signature added later is seen soon")
	fs.DurationVar(&f.MaterialTTL, "provenance-ttl", provenance.DefaultMaterialTTL, "how long signatures and attestations fetched for a digest, and positive verification results, are reused")
	fs.IntVar(&f.Concurrency, "provenance-concurrency", provenance.DefaultMaxConcurrent, "concurrent signature verifications")
}
