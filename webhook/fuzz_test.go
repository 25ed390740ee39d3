package webhook_test

import (
	"testing"
	"time"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
	"buildguard.dev/buildguard/webhook"
)

// FuzzDecodeReview feeds arbitrary bodies through decoding and review. A
// policy that allows no registry keeps the review off the network while
// still running the real engine on whatever object decodes.
func FuzzDecodeReview(f *testing.F) {
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"containers":[{"name":"a","image":"nginx"}]}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"batch","version":"v1","kind":"CronJob"},"operation":"UPDATE","object":{"spec":{"jobTemplate":{"spec":{"template":{"spec":{"initContainers":[{"image":"x@sha256:00"}]}}}}}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"ReplicationController"},"operation":"CREATE","object":{"spec":{}}}}`))
	f.Add([]byte(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"version":"v1","kind":"Pod"},"operation":"CREATE","object":{"spec":{"volumes":[{"name":"s","hostPath":{"path":"/var/run"}}],"containers":[{"image":"a","volumeMounts":[{"name":"s","subPath":"../../"}]}]}}}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[]`))
	p, err := policy.Compile(policy.Spec{Registries: policy.Registries{Allow: []string{"nothing.invalid/none"}}})
	if err != nil {
		f.Fatal(err)
	}
	h := &webhook.Handler{Evaluator: &engine.Engine{
		Policies: engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver: registry.New(),
		Clock:    clocktest.New(time.Unix(1_800_000_000, 0)),
		Timeout:  time.Second,
	}}
	f.Fuzz(func(t *testing.T, body []byte) {
		review, err := webhook.DecodeReview(body)
		if err != nil {
			return
		}
		if review.Request == nil || review.Request.UID == "" {
			t.Fatalf("DecodeReview(%q) accepted a review without request or uid", body)
		}
		resp := h.Review(t.Context(), review.Request)
		if resp == nil || resp.UID != review.Request.UID {
			t.Fatalf("Review(%q) = %+v, want a response with the request's uid", body, resp)
		}
		if !resp.Allowed && resp.Result == nil {
			t.Fatalf("Review(%q) denied without a reason", body)
		}
	})
}
