package main

import (
	"os"
	"testing"
	"time"
)

func TestLeastSquares(t *testing.T) {
	for _, tc := range []struct {
		xs, ys []float64
		want   float64
	}{
		{[]float64{1, 3, 6}, []float64{100, 118, 145}, 9},
		{[]float64{1, 3}, []float64{100, 100}, 0},
		{[]float64{2, 2}, []float64{1, 5}, 0}, // no spread: no slope
	} {
		if got := leastSquares(tc.xs, tc.ys); got < tc.want-1e-9 || got > tc.want+1e-9 {
			t.Errorf("leastSquares(%v, %v) = %v, want %v", tc.xs, tc.ys, got, tc.want)
		}
	}
}

func TestProcessFigures(t *testing.T) {
	// Burn some CPU so that the process has used at least a tick.
	deadline := time.Now().Add(50 * time.Millisecond)
	for time.Now().Before(deadline) {
	}
	cpu, err := processCPU(os.Getpid())
	if err != nil || cpu <= 0 {
		t.Errorf("processCPU(self) = %v, %v; want a positive duration", cpu, err)
	}
	rss, err := processRSS(os.Getpid())
	if err != nil || rss < 1<<20 {
		t.Errorf("processRSS(self) = %v, %v; want at least 1 MiB", rss, err)
	}
	if _, err := processCPU(-1); err == nil {
		t.Error("processCPU(-1): want an error")
	}
}

func TestParseFlags(t *testing.T) {
	for _, args := range [][]string{
		{"-concurrency", "0"},
		{"-containers", "1,x"},
		{"-targets", "postgres"},
		{"-rounds", "0"},
		{"extra"},
	} {
		if _, err := parseFlags(args, os.Stderr); err == nil {
			t.Errorf("parseFlags(%q): want an error", args)
		}
	}
	c, err := parseFlags(nil, os.Stderr)
	if err != nil || len(c.concurrency) != 2 || len(c.containers) != 3 || len(c.targets) != 2 {
		t.Errorf("parseFlags(nil) = %+v, %v", c, err)
	}
}
