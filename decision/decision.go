// Package decision defines what buildguard decided about one workload —
// who asked, for what operation, the workload, the verdict, when, and
// whether an admission review, an audit scan or late node evidence made
// the decision — and the Observer that metrics, decision records and
// Events implement to be told of one.
package decision

import (
	"context"
	"time"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
)

// Source is where a decision came from.
type Source string

// Sources of decisions.
const (
	// Admission is the webhook's answer to an admission review.
	Admission Source = "admission"
	// Scan is an audit scan's judgement of a workload already running.
	Scan Source = "scan"
	// LateEvidence is an admitted workload judged again when node
	// evidence about its images arrived after its admission.
	LateEvidence Source = "late-evidence"
)

// Operations of the decisions that are not admissions, as their records
// carry them in place of CREATE or UPDATE.
const (
	OperationScan         = "SCAN"
	OperationLateEvidence = "LATE-EVIDENCE"
)

// Decision is one verdict on one workload.
type Decision struct {
	// ID names the decision; its record is kept under it, once. An
	// admission's is the request's UID; a scan's "<object UID>/<scan
	// ID>"; late evidence's "<admission UID>/late-<µs since the epoch>".
	ID string
	// Source is where the decision came from.
	Source Source
	// Operation is the admission request's (CREATE, UPDATE), or
	// OperationScan or OperationLateEvidence. It is what the decision's
	// record says; Workload.Operation is what the engine judged.
	Operation string
	// User and Groups are who asked: the admission request's user, or
	// buildguard's own name for a scan or late evidence.
	User   string
	Groups []string
	// Workload is what was judged: its namespace, kind, name and spec.
	Workload engine.Workload
	// Verdict is the engine's verdict.
	Verdict policy.Verdict
	// Time is when the decision was made.
	Time time.Time
}

// Word is the verdict as decision records and metrics name it:
// policy.Verdict.Word, except that a decision that blocked nothing — a
// scan, late evidence — turns a deny into a would-deny.
func (d Decision) Word() string {
	if d.Verdict.Outcome == policy.OutcomeDeny && (d.Source == Scan || d.Source == LateEvidence) {
		return policy.WouldDeny
	}
	return d.Verdict.Word()
}

// Observer is told of decisions after they are made. Decided must not
// block: an admission's API server is waiting.
type Observer interface {
	Decided(ctx context.Context, d Decision)
}

// ObserverFunc is a function that is an Observer.
type ObserverFunc func(ctx context.Context, d Decision)

// Decided implements Observer.
func (f ObserverFunc) Decided(ctx context.Context, d Decision) { f(ctx, d) }

// Observers tells each of its Observers in turn.
type Observers []Observer

// Decided implements Observer.
func (o Observers) Decided(ctx context.Context, d Decision) {
	for _, ob := range o {
		ob.Decided(ctx, d)
	}
}
