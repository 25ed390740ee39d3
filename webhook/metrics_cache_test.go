package webhook

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestMetricsCacheResult(t *testing.T) {
	m := NewMetrics()
	for _, c := range []struct {
		cache string
		hit   bool
		n     int
	}{{"tag", true, 3}, {"tag", false, 1}, {"digest", true, 5}, {"digest", false, 2}, {"other", true, 1}} {
		for range c.n {
			m.CacheResult(c.cache, c.hit)
		}
	}
	got := counters(t, m, "buildguard_cache_lookups_total")
	want := map[string]float64{
		"cache=tag result=hit ":     3,
		"cache=tag result=miss ":    1,
		"cache=digest result=hit ":  5,
		"cache=digest result=miss ": 2,
		"cache=other result=hit ":   1,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("buildguard_cache_lookups_total (-want +got):\n%s", diff)
	}
}
