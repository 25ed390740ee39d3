//go:build !linux

package conns

import (
	"errors"
)

// newEBPFWatcher fails: the eBPF sensor needs Linux.
func newEBPFWatcher(Options) (Watcher, error) {
	return nil, &LoadError{Step: "tracefs", Err: errors.New("eBPF sensor is only available on Linux")}
}
