// Command buildguard is a Kubernetes validating admission webhook that
// denies container images built outside approved pipelines (MITRE ATT&CK
// T1612, Build Image on Host), and the same engine on the command line.
//
//	buildguard serve --config FILE --tls-cert-file FILE --tls-private-key-file FILE
//	buildguard check --config FILE [--output text|json] IMAGE...
//	buildguard check --config FILE -f PATH... [--output text|json|junit|sarif]
//	buildguard denials [--since 24h] [--namespace NS] [--rule ID] [--image GLOB] [--output table|json|yaml]
//	buildguard denials show ID
//	buildguard audit [--config FILE | --policy-source=crd] [--namespace NS] [--output table|json]
//	buildguard node-agent --server URL --ca-file FILE
//	buildguard version
//
// Installed as kubectl-buildguard, it is a kubectl plugin: "kubectl
// buildguard denials" runs "buildguard denials".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

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
	code := runAs(ctx, programName(os.Args[0]), os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `buildguard denies container images built outside approved pipelines.

Usage:
  buildguard serve --config FILE --tls-cert-file FILE --tls-private-key-file FILE [flags]
  buildguard check --config FILE [--output text|json] IMAGE...
  buildguard check --config FILE -f FILE|DIR|- ... [--namespace NS] [-o text|json|junit|sarif]
  buildguard denials [--since 24h] [-n NAMESPACE] [--rule ID] [--image GLOB]
                     [--verdict deny,would-deny] [-o table|json|yaml] --store-sqlite PATH
  buildguard denials show ID --store-sqlite PATH
  buildguard audit --config FILE | --policy-source=crd [-n NAMESPACE] [-o table|json]
                   [--store-sqlite PATH] [--kubeconfig FILE] [--no-progress]
  buildguard node-agent --server URL [--ca-file FILE] [--node NAME] [flags]
  buildguard version

Run "buildguard COMMAND -h" for the flags of a command.
`

// pluginName is the name that makes the binary a kubectl plugin.
const pluginName = "kubectl-buildguard"

// programName is how the program calls itself in messages: "kubectl
// buildguard" when run as the kubectl plugin (kubectl passes the plugin
// the arguments after "kubectl buildguard", so they need no change).
func programName(arg0 string) string {
	if strings.TrimSuffix(filepath.Base(arg0), ".exe") == pluginName {
		return "kubectl buildguard"
	}
	return "buildguard"
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runAs(ctx, "buildguard", args, stdout, stderr)
}

// runAs runs the command args as the program prog.
func runAs(ctx context.Context, prog string, args []string, stdout, stderr io.Writer) int {
	usage := usage
	if prog != "buildguard" {
		usage = strings.ReplaceAll(usage, "buildguard ", prog+" ")
	}
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
		code, err = check(ctx, args[1:], os.Stdin, stdout, stderr)
	case "denials":
		err = denials(ctx, args[1:], stdout, stderr, time.Now())
	case "audit":
		code, err = runAudit(ctx, args[1:], stdout, stderr)
	case "node-agent":
		err = nodeAgent(ctx, args[1:], stderr)
	case "version":
		fmt.Fprintln(stdout, prog, version)
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
	fmt.Fprintf(stderr, "%s: %v\n", prog, err)
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
