package denypath

import (
	"buildguard.dev/buildguard/records"
	"buildguard.dev/buildguard/webhook"
)

// What differs from the code before issue 14, when every record was
// queued after the answer; docs/benchmark-results.md says how that was
// measured with this benchmark.

// recorderOptions are `buildguard serve`'s, with --decision-commit=journal
// when journalFirst.
func recorderOptions(journalFirst bool) []records.Option {
	return []records.Option{records.WithQueueSize(records.DefaultQueueSize), records.WithJournalFirst(journalFirst)}
}

// wire hands the handler's decisions to the recorder as `buildguard
// serve` does: a deny or would-deny is recorded before it is answered.
func wire(h *webhook.Handler, rec *records.Recorder) { h.Recorder = rec }

// queued is how many records wait in memory for the recorder's writer.
func queued(rec *records.Recorder) int { return rec.Queued() }
