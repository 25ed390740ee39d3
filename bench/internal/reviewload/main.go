package reviewload

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"time"
)

// FailedRunsError reports runs that had errors; the figures were printed.
type FailedRunsError struct {
	N     int    // runs with errors
	Where string // where the errors are printed, say "table"
}

func (e *FailedRunsError) Error() string {
	return fmt.Sprintf("%d run(s) had errors; see the %s", e.N, e.Where)
}

// Main runs a benchmark command: run with os.Args and os.Stdout, until
// it returns or an interrupt cancels its context. It exits with status 1
// when run returned a *FailedRunsError, 2 on any other error but
// flag.ErrHelp (the usage was printed), each printed on stderr after
// "name: ".
func Main(name string, run func(ctx context.Context, args []string, out io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	err := run(ctx, os.Args, os.Stdout)
	var failed *FailedRunsError
	switch {
	case errors.Is(err, flag.ErrHelp):
	case errors.As(err, &failed):
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(1)
	case err != nil:
		fmt.Fprintln(os.Stderr, name+":", err)
		os.Exit(2)
	}
}

// CheckFlags checks what the flags of every benchmark share: no
// arguments besides them, a positive -duration and a -warmup that is not
// negative.
func CheckFlags(fs *flag.FlagSet, duration, warmup time.Duration) error {
	switch {
	case fs.NArg() > 0:
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	case duration <= 0:
		return errors.New("-duration must be positive")
	case warmup < 0:
		return errors.New("-warmup must not be negative")
	}
	return nil
}
