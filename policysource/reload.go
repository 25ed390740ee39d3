package policysource

import (
	"context"
	"log/slog"
	"time"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
)

// Reloadable is a source read from a file, which Reload reads again if it
// changed. An error means the file did not validate or could not be read,
// and what was read before stays in force.
type Reloadable interface {
	Reload() error
}

// Reloader re-reads file sources every Interval until its context ends:
// the policy file and the exceptions file, on one ticker.
type Reloader struct {
	// Interval is how often the files are read again. Zero or less never
	// reads them again: Run returns at once.
	Interval time.Duration
	// Log receives each failed reload. The default discards.
	Log *slog.Logger
	// Clock ticks every Interval. The default, nil, is the real clock.
	Clock clock.Clock

	files []reloading
}

type reloading struct {
	src Reloadable
	// failed is the message a failed reload is logged with: what stays
	// in force.
	failed string
}

// Add has Run re-read src; a reload that fails is logged with the message
// failed and the error.
func (r *Reloader) Add(src Reloadable, failed string) {
	r.files = append(r.files, reloading{src, failed})
}

// Run re-reads the sources until ctx ends. It returns nil.
func (r *Reloader) Run(ctx context.Context) error {
	if r.Interval <= 0 || len(r.files) == 0 {
		return nil
	}
	log := logger.OrDiscard(r.Log)
	t := clock.OrReal(r.Clock).NewTicker(r.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			for _, f := range r.files {
				if err := f.src.Reload(); err != nil {
					log.Error(f.failed, "error", err)
				}
			}
		}
	}
}
