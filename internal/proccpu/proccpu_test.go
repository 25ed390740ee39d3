package proccpu

import (
	"runtime"
	"testing"
)

func TestSelfGrowsWithWork(t *testing.T) {
	before, ok := Self()
	if !ok {
		if runtime.GOOS == "linux" {
			t.Fatal("Self: not available on linux")
		}
		t.Skip("no process CPU time on " + runtime.GOOS)
	}
	x := 0
	for i := 0; i < 50_000_000; i++ {
		x += i * i
	}
	after, _ := Self()
	if after <= before {
		t.Fatalf("CPU time went from %v to %v after a busy loop (%d)", before, after, x)
	}
}
