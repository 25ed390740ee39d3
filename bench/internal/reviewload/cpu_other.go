//go:build !unix

package reviewload

import "time"

// SelfCPU is not available on this system.
func SelfCPU() (time.Duration, bool) { return 0, false }
