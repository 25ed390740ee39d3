package webhook_test

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"buildguard.dev/buildguard/internal/benchreview"
)

// benchReview is the AdmissionReview go run ./bench sends: a CREATE of
// a Deployment whose two containers run image by tag, with probes,
// resources, env and security contexts that buildguard skips.
func benchReview(b testing.TB, image string) []byte {
	b.Helper()
	body, err := benchreview.NewBody(nil, benchreview.WebContainers(image))
	if err != nil {
		b.Fatal(err)
	}
	var uids benchreview.UIDs
	return body.With(uids.Next())
}

// discardWriter is a ResponseWriter that keeps only the status and the
// size, so that the benchmark measures the handler, not a recorder.
type discardWriter struct {
	h      http.Header
	code   int
	n      int
	sample []byte
}

func (w *discardWriter) Header() http.Header { return w.h }
func (w *discardWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}
func (w *discardWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.sample == nil {
		w.sample = append([]byte(nil), p...)
	}
	w.n += len(p)
	return len(p), nil
}

// BenchmarkServeHTTP measures one cached review of a Deployment through
// ServeHTTP, without HTTPS: decoding, evaluation from the caches, and
// encoding the answer. go run ./bench measures the whole path.
func BenchmarkServeHTTP(b *testing.B) {
	f := newFixture(b, "")
	body := benchReview(b, f.clean)
	m := newMutator(f)
	for _, tt := range []struct {
		name string
		h    http.Handler
		want string
	}{
		{"validate", f.handler, `"allowed":true`},
		{"mutate", m, `"patchType":"JSONPatch"`},
	} {
		b.Run(tt.name, func(b *testing.B) {
			serve := func() *discardWriter {
				r := httptest.NewRequest(http.MethodPost, "/validate?timeout=10s", bytes.NewReader(body))
				r.Header.Set("Content-Type", "application/json")
				w := &discardWriter{h: http.Header{}}
				tt.h.ServeHTTP(w, r)
				return w
			}
			if w := serve(); w.code != http.StatusOK || !strings.Contains(string(w.sample), tt.want) {
				b.Fatalf("ServeHTTP = %d %s, want 200 with %s", w.code, w.sample, tt.want)
			}
			b.ReportAllocs()
			b.SetBytes(int64(len(body)))
			// CPU time per review, the garbage collector's included,
			// says more than ns/op on a machine other work shares.
			cpu0, ok := processCPU()
			for b.Loop() {
				serve()
			}
			if cpu1, ok1 := processCPU(); ok && ok1 {
				b.ReportMetric(float64(cpu1-cpu0)/float64(b.N), "cpu-ns/op")
			}
		})
	}
}
