// Command buildguard is a Kubernetes validating admission webhook that
// denies container images built outside approved pipelines (MITRE ATT&CK
// T1612, Build Image on Host), and the same engine on the command line.
//
//	buildguard serve --config FILE --tls-cert-file FILE --tls-private-key-file FILE
//	buildguard check --config FILE [--output text|json] IMAGE...
//	buildguard version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	// Release windows name IANA time zones; a distroless image has no
	// zoneinfo of its own.
	_ "time/tzdata"
)

// version is stamped in with -ldflags "-X main.version=...".
var version = "dev"

// Exit statuses of every subcommand.
const (
	exitOK     = 0
	exitDenied = 1 // check: at least one image would be denied
	exitError  = 2 // usage, configuration or registry error
)

// usageError is a mistake on the command line.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `buildguard denies container images built outside approved pipelines.

Usage:
  buildguard serve --config FILE --tls-cert-file FILE --tls-private-key-file FILE [flags]
  buildguard check --config FILE [--output text|json] IMAGE...
  buildguard version

Run "buildguard COMMAND -h" for the flags of a command.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitError
	}
	var err error
	code := exitOK
	switch args[0] {
	case "serve":
		err = serve(ctx, args[1:], stderr)
	case "check":
		code, err = check(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "buildguard", version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		err = &usageError{msg: fmt.Sprintf("unknown command %q", args[0])}
	}
	if err == nil {
		return code
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintln(stderr, "buildguard:", err)
	var ue *usageError
	if errors.As(err, &ue) {
		fmt.Fprint(stderr, "\n", usage)
	}
	return exitError
}

// parseFlags parses a subcommand's flags, reporting mistakes as usage
// errors rather than exiting.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &usageError{msg: err.Error()}
	}
	return nil
}
