//go:build !unix

package policy

import "time"

// processCPU is not available here; benchmarks report ns/op only.
func processCPU() (time.Duration, bool) { return 0, false }
