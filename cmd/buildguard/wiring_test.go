package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
)

func TestNewLogger(t *testing.T) {
	for _, tc := range []struct {
		format, level string
		lowest        slog.Level // the lowest level enabled
		wantErr       string
	}{
		{"json", "", slog.LevelInfo, ""},
		{"json", "info", slog.LevelInfo, ""},
		{"text", "debug", slog.LevelDebug, ""},
		{"json", "WARN", slog.LevelWarn, ""},
		{"json", "error", slog.LevelError, ""},
		{"json", "loud", 0, `--log-level "loud": want debug, info, warn or error`},
		{"xml", "info", 0, `--log-format "xml": want json or text`},
	} {
		log, err := newLogger(tc.format, tc.level, io.Discard)
		if tc.wantErr != "" {
			var ue *usageError
			if !errors.As(err, &ue) || err.Error() != tc.wantErr {
				t.Errorf("newLogger(%q, %q) error = %v, want usage error %q", tc.format, tc.level, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Fatalf("newLogger(%q, %q): %v", tc.format, tc.level, err)
		}
		ctx := context.Background()
		if !log.Enabled(ctx, tc.lowest) || log.Enabled(ctx, tc.lowest-1) {
			t.Errorf("newLogger(%q, %q) logs from %v, want from %v", tc.format, tc.level, lowestEnabled(log), tc.lowest)
		}
	}
}

func lowestEnabled(log *slog.Logger) slog.Level {
	for _, l := range []slog.Level{slog.LevelDebug, slog.LevelInfo, slog.LevelWarn, slog.LevelError} {
		if log.Enabled(context.Background(), l) {
			return l
		}
	}
	return slog.LevelError + 1
}
