package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"time"
)

// Names of the two targets.
const (
	nameBuildguard = "buildguard"
	nameNothing    = "do-nothing"
)

// maxErrorSamples bounds the error messages kept per run.
const maxErrorSamples = 3

// target is a webhook endpoint under load.
type target struct {
	name string
	url  string
}

// runResult is one measured run against one target.
type runResult struct {
	target       string
	pair         int
	requests     int // answered correctly
	errors       int
	errorSamples []string
	elapsed      time.Duration
	cpu          time.Duration   // process CPU time; 0 when unknown
	latencies    []time.Duration // of correct answers, sorted
	side         sideEffects
}

func (r runResult) rps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.requests) / r.elapsed.Seconds()
}

// percentile returns the nearest-rank p-th percentile latency; 100 is the
// maximum.
func (r runResult) percentile(p float64) time.Duration {
	return percentile(r.latencies, p)
}

// cpuShare is the share of the machine's CPUs (GOMAXPROCS of them) the
// process used during the run, or -1 when unknown. Under saturating load
// on a quiet machine it is high (0.85-0.96 on 2 CPUs); a drop means
// something else ran.
func (r runResult) cpuShare() float64 {
	if r.cpu <= 0 || r.elapsed <= 0 {
		return -1
	}
	return float64(r.cpu) / (float64(r.elapsed) * float64(runtime.GOMAXPROCS(0)))
}

// cpuPerRequest is the process's CPU time per correct answer (client,
// server and handler together), or 0 when unknown. Other work on the
// machine slows a run down but changes it much less than req/s, so the
// ratio of two targets' figures is the steadier measure of their cost.
func (r runResult) cpuPerRequest() time.Duration {
	if r.cpu <= 0 || r.requests <= 0 {
		return 0
	}
	return r.cpu / time.Duration(r.requests)
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	// Nearest rank: the smallest value with at least p% of values at or below it.
	rank := int(p/100*float64(n) + 0.9999999)
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// worker holds what one load goroutine recorded.
type worker struct {
	latencies []time.Duration
	errors    int
	samples   []string
}

// load sends reviews to t from f.cfg.concurrency goroutines until d has
// passed, then waits for the requests in flight (each bounded by the
// client's timeout). With record false the results are discarded.
func (f *fixture) load(ctx context.Context, t *target, d time.Duration, record bool) runResult {
	workers := make([]worker, f.cfg.concurrency)
	cpu0, cpuOK := processCPU()
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		if record {
			// Enough for ~20k req/s per worker-second spread over workers.
			w.latencies = make([]time.Duration, 0, int(d.Seconds()*20000)/len(workers)+16)
		}
		wg.Go(func() {
			loop := func(ctx context.Context) {
				for ctx.Err() == nil && time.Now().Before(deadline) {
					uid := f.nextUID()
					t0 := time.Now()
					err := f.review(ctx, t, uid)
					el := time.Since(t0)
					if err != nil {
						w.errors++
						if len(w.samples) < maxErrorSamples {
							w.samples = append(w.samples, err.Error())
						}
						continue
					}
					if record {
						w.latencies = append(w.latencies, el)
					}
				}
			}
			if f.profiling {
				pprof.Do(ctx, pprof.Labels("side", "client"), loop)
			} else {
				loop(ctx)
			}
		})
	}
	wg.Wait()
	r := runResult{target: t.name, elapsed: time.Since(start)}
	if cpu1, ok := processCPU(); ok && cpuOK {
		r.cpu = cpu1 - cpu0
	}
	for _, w := range workers {
		r.latencies = append(r.latencies, w.latencies...)
		r.errors += w.errors
		for _, s := range w.samples {
			if len(r.errorSamples) < maxErrorSamples {
				r.errorSamples = append(r.errorSamples, s)
			}
		}
	}
	slices.Sort(r.latencies)
	r.requests = len(r.latencies)
	return r
}

// reviewAnswer is the part of an AdmissionReview answer the load checks.
type reviewAnswer struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Response   *struct {
		UID     string `json:"uid"`
		Allowed bool   `json:"allowed"`
	} `json:"response"`
}

// review sends one AdmissionReview with request uid and checks the answer:
// status 200, an AdmissionReview whose response has the same uid and
// allows. The latency the caller measures includes reading the body, not
// decoding it.
func (f *fixture) review(ctx context.Context, t *target, uid string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(f.body(uid)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := f.client.Do(req)
	if err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("reading answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %.200s", resp.StatusCode, b)
	}
	if resp.ProtoMajor != f.protoMajor {
		return fmt.Errorf("answered over %s, want HTTP/%d", resp.Proto, f.protoMajor)
	}
	var a reviewAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		return fmt.Errorf("answer is not JSON: %v", err)
	}
	switch {
	case a.APIVersion != "admission.k8s.io/v1" || a.Kind != "AdmissionReview":
		return fmt.Errorf("answer is %q %q, want admission.k8s.io/v1 AdmissionReview", a.APIVersion, a.Kind)
	case a.Response == nil:
		return fmt.Errorf("answer has no response: %.200s", b)
	case a.Response.UID != uid:
		return fmt.Errorf("answer uid %q, want %q", a.Response.UID, uid)
	case !a.Response.Allowed:
		return fmt.Errorf("answer does not allow: %.300s", b)
	}
	return nil
}
