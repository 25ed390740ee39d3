// Package proccpu tells the CPU time this process has used, for
// benchmarks that report CPU per operation beside wall time.
package proccpu
