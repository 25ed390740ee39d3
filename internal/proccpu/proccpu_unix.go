//go:build unix

package proccpu

import (
	"syscall"
	"time"
)

// Self returns the user and system CPU time this process has used, and
// false when it is unknown.
func Self() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
