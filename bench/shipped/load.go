package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	admissionv1 "k8s.io/api/admission/v1"

	"buildguard.dev/buildguard/bench/internal/reviewload"
	"buildguard.dev/buildguard/internal/benchreview"
)

// runResult is one measured run of one target.
type runResult struct {
	round       int
	target      string
	containers  int
	concurrency int
	requests    int
	errors      int
	samples     []string
	elapsed     time.Duration
	cpu         time.Duration   // of the target process; 0 when unknown
	clientCPU   time.Duration   // of this process
	latencies   []time.Duration // sorted
	logBytes    int64
	load        string // load average at the start
}

func (r runResult) rps() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.requests) / r.elapsed.Seconds()
}

// cpuPerReview is the target process's CPU time per answered review.
func (r runResult) cpuPerReview() time.Duration {
	if r.cpu <= 0 || r.requests == 0 {
		return 0
	}
	return r.cpu / time.Duration(r.requests)
}

func (r runResult) percentile(p float64) time.Duration {
	return reviewload.Percentile(r.latencies, p)
}

// load sends reviews of b to t from conc goroutines for d, each sending
// its next review as soon as the previous one is answered, then waits for
// those in flight (each bounded by the client's timeout).
func (e *env) load(ctx context.Context, t *target, b *benchreview.Body, conc int, d time.Duration, record bool) runResult {
	r := runResult{target: t.name, containers: b.Containers, concurrency: conc, load: loadAverage()}
	cpu0, cerr0 := processCPU(t.pid())
	ccpu0 := selfCPU()
	log0 := t.logBytes()
	lr := reviewload.Run(ctx, conc, d, record, func(ctx context.Context) error {
		return e.review(ctx, t, b, e.uids.Next())
	})
	r.elapsed = lr.Elapsed
	// Work the reviews left behind (decision records on their way to the
	// store) is theirs: wait for the target to go idle, and count it.
	if cpu1, err := settle(ctx, t.pid()); err == nil && cerr0 == nil {
		r.cpu = cpu1 - cpu0
	}
	r.clientCPU = selfCPU() - ccpu0
	r.logBytes = t.logBytes() - log0
	r.latencies, r.errors, r.samples = lr.Latencies, lr.Errors, lr.Samples
	r.requests = len(r.latencies)
	return r
}

// settle waits, up to 10s, until process pid uses less than 10% of a CPU
// over 200ms, and returns its CPU time then.
func settle(ctx context.Context, pid int) (time.Duration, error) {
	prev, err := processCPU(pid)
	if err != nil {
		return 0, err
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; {
		time.Sleep(200 * time.Millisecond)
		cur, err := processCPU(pid)
		if err != nil {
			return 0, err
		}
		if cur-prev <= 20*time.Millisecond {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

// review sends one review with uid and checks the answer without decoding
// it: status 200, the uid, allowed. The warm-up checked a whole answer of
// each target.
func (e *env) review(ctx context.Context, t *target, b *benchreview.Body, uid string) error {
	ans, status, err := e.post(ctx, t, b, uid)
	if err != nil {
		return err
	}
	switch {
	case status != http.StatusOK:
		return fmt.Errorf("status %d: %.200s", status, ans)
	case !bytes.Contains(ans, []byte(`"uid":"`+uid+`"`)):
		return fmt.Errorf("answer without uid %s: %.300s", uid, ans)
	case !bytes.Contains(ans, []byte(`"allowed":true`)):
		return fmt.Errorf("answer does not allow: %.300s", ans)
	}
	return nil
}

func (e *env) post(ctx context.Context, t *target, b *benchreview.Body, uid string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url+"?timeout=10s", bytes.NewReader(b.With(uid)))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, */*")
	resp, err := e.client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	ans, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, 0, fmt.Errorf("reading answer: %w", err)
	}
	if resp.ProtoMajor != 1 {
		return nil, 0, fmt.Errorf("answered over %s, want HTTP/1.1", resp.Proto)
	}
	return ans, resp.StatusCode, nil
}

// warm sends one review of every shape to every target and checks the
// whole answer: buildguard's must allow with verdict "allow", no warnings
// and a digest for every container, so that the runs measure the path
// they claim to.
func (e *env) warm(ctx context.Context) error {
	for _, t := range e.targets {
		for _, c := range e.cfg.containers {
			b := e.bodies[c]
			uid := e.uids.Next()
			ans, status, err := e.post(ctx, t, b, uid)
			if err != nil {
				return fmt.Errorf("warm-up review of %s: %w", t.name, err)
			}
			var rv admissionv1.AdmissionReview
			if err := json.Unmarshal(ans, &rv); err != nil || status != http.StatusOK || rv.Response == nil ||
				rv.APIVersion != "admission.k8s.io/v1" || rv.Kind != "AdmissionReview" {
				return fmt.Errorf("warm-up review of %s: status %d: %.300s", t.name, status, ans)
			}
			r := rv.Response
			if !r.Allowed || string(r.UID) != uid || len(r.Warnings) > 0 {
				return fmt.Errorf("warm-up review of %s: want uid %s allowed with no warnings, got %.600s", t.name, uid, ans)
			}
			if t.name == "do-nothing" {
				continue
			}
			var digests map[string]string
			json.Unmarshal([]byte(r.AuditAnnotations["digests"]), &digests)
			if r.AuditAnnotations["verdict"] != "allow" || len(digests) != c {
				return fmt.Errorf("warm-up review of %s with %d containers: want verdict allow and %d digests, got %.600s", t.name, c, c, ans)
			}
		}
	}
	return nil
}

func itoa(n int) string { return strconv.Itoa(n) }
