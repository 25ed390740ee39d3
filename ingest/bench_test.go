package ingest_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"buildguard.dev/buildguard/ingest"
)

// BenchmarkIngest posts node reports — one build and 20 connections
// each, every one new — through the real handler: TokenReview (answered
// by a real kube-apiserver, then cached), parsing, and a real SQLite
// store. The token is bound to worker-7's agent pod, so every report is
// taken as worker-7's. It reports reports/s and the p50 and p99 of one report.
//
//	go test -run '^$' -bench Ingest ./ingest/
func BenchmarkIngest(b *testing.B) {
	env := sharedEnv(b)
	h := &ingest.Handler{
		Store:   openStore(b),
		Auth:    env.reviewer(b, nil),
		Formats: ingest.Formats(),
		Burst:   1 << 30, Rate: 1 << 30,
	}
	now := time.Now().UTC().Truncate(time.Second)
	var seq atomic.Int64
	body := func() string {
		n := seq.Add(1)
		var conns []string
		for i := range 20 {
			conns = append(conns, fmt.Sprintf(`{"eventID":"c-%d-%d","time":%q,"process":"wget","pid":%d,"destIP":"203.0.113.%d","destPort":443}`,
				n, i, now.Add(-time.Duration(i)*time.Second).Format(time.RFC3339), 1000+i, i+1))
		}
		return fmt.Sprintf(`{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":"worker-%d","sensor":"ebpf",
"builds":[{"eventID":"b-%d","tool":"docker","imageID":"sha256:%064x","started":%q,"finished":%q}],"connections":[%s]}`,
			n%50, n, n, now.Add(-time.Minute).Format(time.RFC3339), now.Format(time.RFC3339), strings.Join(conns, ","))
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		r := httptest.NewRequest(http.MethodPost, "/v1/node-reports", strings.NewReader(body()))
		r.Header.Set("Authorization", "Bearer "+env.bound7)
		w := httptest.NewRecorder()
		t0 := time.Now()
		h.ServeHTTP(w, r)
		lat = append(lat, time.Since(t0))
		if w.Code != http.StatusOK {
			b.Fatalf("POST = %d %s", w.Code, w.Body.String())
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "reports/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
