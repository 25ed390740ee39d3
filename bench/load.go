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
	"time"

	"buildguard.dev/buildguard/internal/proccpu"

	"buildguard.dev/buildguard/bench/internal/reviewload"
)

// Names of the two targets.
const (
	nameBuildguard = "buildguard"
	nameNothing    = "do-nothing"
)

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
	return reviewload.Percentile(r.latencies, p)
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

// load sends reviews to t from f.cfg.concurrency goroutines until d has
// passed, then waits for the requests in flight (each bounded by the
// client's timeout). With record false the results are discarded.
func (f *fixture) load(ctx context.Context, t *target, d time.Duration, record bool) runResult {
	send := func(ctx context.Context) error { return f.review(ctx, t, f.nextUID()) }
	cpu0, cpuOK := proccpu.Self()
	var lr reviewload.Result
	if f.profiling {
		// The load goroutines inherit the label.
		pprof.Do(ctx, pprof.Labels("side", "client"), func(ctx context.Context) {
			lr = reviewload.Run(ctx, f.cfg.concurrency, d, record, send)
		})
	} else {
		lr = reviewload.Run(ctx, f.cfg.concurrency, d, record, send)
	}
	r := runResult{target: t.name, elapsed: lr.Elapsed, errors: lr.Errors, errorSamples: lr.Samples, latencies: lr.Latencies, requests: len(lr.Latencies)}
	if cpu1, ok := proccpu.Self(); ok && cpuOK {
		r.cpu = cpu1 - cpu0
	}
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
