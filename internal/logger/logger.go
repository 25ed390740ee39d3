// Package logger is the one way buildguard's components default their
// *slog.Logger field: nil discards.
package logger

import "log/slog"

// discard is shared: a *slog.Logger does not change, and a component that
// asks for its logger on every call should not allocate one each time.
var discard = slog.New(slog.DiscardHandler)

// OrDiscard is l, or a logger that discards when l is nil.
func OrDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return discard
	}
	return l
}
