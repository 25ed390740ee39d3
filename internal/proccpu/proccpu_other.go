//go:build !unix

package proccpu

import "time"

// Self is not available on this system: it returns false.
func Self() (time.Duration, bool) { return 0, false }
