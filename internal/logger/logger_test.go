package logger

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
)

func TestOrDiscard(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, nil))
	if got := OrDiscard(l); got != l {
		t.Errorf("OrDiscard(l) = %p, want l (%p)", got, l)
	}
	d := OrDiscard(nil)
	if d == nil {
		t.Fatal("OrDiscard(nil) = nil, want a logger")
	}
	if d.Enabled(context.Background(), slog.LevelError) {
		t.Error("OrDiscard(nil) is enabled at LevelError, want a logger that discards")
	}
	d.Error("not written")
	if buf.Len() != 0 {
		t.Errorf("wrote %q", buf.String())
	}
}
