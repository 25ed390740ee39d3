package reviewload

import (
	"context"
	"slices"
	"sync"
	"time"
)

// MaxErrorSamples bounds the error messages a run keeps.
const MaxErrorSamples = 3

// Result is what one run of Run saw.
type Result struct {
	Elapsed   time.Duration
	Latencies []time.Duration // of the requests that succeeded, sorted; none unless recorded
	Errors    int
	Samples   []string // the first error messages, at most MaxErrorSamples
}

// Run calls send from conc goroutines until d has passed, each calling
// again as soon as its previous call returned, then waits for the calls
// in flight (send bounds them). With record false the latencies are not
// kept. The goroutines inherit ctx's goroutine's pprof labels.
func Run(ctx context.Context, conc int, d time.Duration, record bool, send func(context.Context) error) Result {
	type worker struct {
		lat     []time.Duration
		errors  int
		samples []string
	}
	workers := make([]worker, conc)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i := range workers {
		w := &workers[i]
		if record {
			// Enough for ~30k req/s spread over the workers.
			w.lat = make([]time.Duration, 0, int(d.Seconds()*30000)/conc+16)
		}
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) {
				t0 := time.Now()
				err := send(ctx)
				el := time.Since(t0)
				if err != nil {
					w.errors++
					if len(w.samples) < MaxErrorSamples {
						w.samples = append(w.samples, err.Error())
					}
					continue
				}
				if record {
					w.lat = append(w.lat, el)
				}
			}
		})
	}
	wg.Wait()
	r := Result{Elapsed: time.Since(start)}
	for _, w := range workers {
		r.Latencies = append(r.Latencies, w.lat...)
		r.Errors += w.errors
		for _, s := range w.samples {
			if len(r.Samples) < MaxErrorSamples {
				r.Samples = append(r.Samples, s)
			}
		}
	}
	slices.Sort(r.Latencies)
	return r
}

// Percentile returns the nearest-rank p-th percentile of sorted: the
// smallest value with at least p% of values at or below it; 100 is the
// maximum, and 0 for none.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	if n == 0 {
		return 0
	}
	rank := int(p/100*float64(n) + 0.9999999)
	rank = min(max(rank, 1), n)
	return sorted[rank-1]
}

// Median returns the median of xs, the mean of the middle two for an even
// count, and 0 for none.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
