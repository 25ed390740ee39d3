package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"buildguard.dev/buildguard/app"
	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/policy"
)

// defaultAuditExclusions are the namespaces the webhook configurations of
// manifests/base do not send to buildguard: a scan leaves them out too
// unless told otherwise.
const defaultAuditExclusions = "kube-system,kube-public,kube-node-lease,buildguard-system,buildguard-node-agent"

// progressInterval is how often progress is written when stderr is not a
// terminal.
const progressInterval = 10 * time.Second

// runAudit is `buildguard audit`: it judges every workload in the
// cluster, records the verdicts when a store is named, and prints the
// summary. The exit status is 2 if a workload could not be judged or
// recorded, else 1 if one would be denied.
func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	var rf registryFlags
	rf.register(fs)
	var pvf provenanceFlags
	pvf.register(fs)
	var sf storeFlags
	sf.register(fs)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig of the cluster to scan (default: $KUBECONFIG, ~/.kube/config, or the pod's service account)")
	kubeContext := fs.String("context", "", "kubeconfig context to use (default: the current one)")
	source := fs.String("policy-source", "", `where policies come from: "file" (--config) or "crd" (the cluster's ClusterBuildPolicy and BuildPolicyException resources); the default is file when --config is set`)
	var namespaces string
	fs.StringVar(&namespaces, "namespace", "", "comma-separated namespaces to scan (default: all)")
	fs.StringVar(&namespaces, "n", "", "short for --namespace")
	exclude := fs.String("exclude-namespaces", defaultAuditExclusions, "comma-separated namespaces not to judge, as the webhook configuration excludes them (\"\" for none)")
	concurrency := fs.Int("concurrency", audit.DefaultConcurrency, "workloads judged at once")
	var output string
	fs.StringVar(&output, "output", "table", "output format: table or json (the whole report)")
	fs.StringVar(&output, "o", "table", "short for --output")
	reports := fs.String("policy-reports", "none", "write the scan's policy reports to the cluster: openreports (openreports.io/v1alpha1), wgpolicyk8s (wgpolicyk8s.io/v1alpha2) or none")
	noProgress := fs.Bool("no-progress", false, "do not report progress on stderr")
	verbose := fs.Bool("v", false, "log lookups that failed and other details on stderr")
	if err := parseFlags(fs, args, stderr); err != nil {
		return exitError, err
	}
	if fs.NArg() > 0 {
		return exitError, &usageError{msg: fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	o := app.ScanOptions{Kubeconfig: *kubeconfig, Context: *kubeContext, Version: version,
		PolicySource: *source, PolicyFile: rf.config, Namespaces: splitList(namespaces), ExcludeNamespaces: splitList(*exclude),
		Concurrency: *concurrency, PolicyReports: *reports, Registry: rf.Registry, Provenance: pvf.Provenance, Store: sf.options()}
	if err := o.Validate(); err != nil {
		return exitError, asUsage(err)
	}
	if output != "table" && output != "json" {
		return exitError, &usageError{msg: fmt.Sprintf("--output %q: want table or json", output)}
	}

	bar := newProgress(stderr, !*noProgress, time.Now)
	level := slog.LevelError
	if *verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(bar, &slog.HandlerOptions{Level: level}))
	scan, err := app.NewScan(ctx, o, log)
	if err != nil {
		return exitError, asUsage(err)
	}
	defer scan.Close()
	r, err := scan.Run(ctx, bar.update)
	bar.done(r)
	if err != nil && r == nil {
		return exitError, err
	}
	var reportErr error
	if err == nil {
		st, written, werr := scan.WriteReports(ctx, r)
		if werr != nil {
			reportErr = fmt.Errorf("policy reports: %w", werr)
		} else if written {
			fmt.Fprintf(stderr, "audit: policy reports: %d created, %d updated, %d deleted; %d results (%d left out of full reports)\n",
				st.Created, st.Updated, st.Deleted, st.Results, st.Omitted)
		}
	}
	if output == "json" {
		if err := json.NewEncoder(stdout).Encode(r); err != nil {
			return exitError, err
		}
	} else if err := writeAuditReport(stdout, r, scan.Recorded()); err != nil {
		return exitError, err
	}
	switch {
	case err != nil:
		return exitError, err
	case reportErr != nil:
		return exitError, reportErr
	case r.Totals.Errors > 0 || r.Totals.NotRecorded > 0:
		return exitError, nil
	case r.Totals.WouldDeny > 0:
		return exitDenied, nil
	}
	return exitOK, nil
}

// progress reports a scan's progress on stderr: a bar redrawn in place
// on a terminal, a line every progressInterval otherwise. It is also the
// writer of the command's log, so log lines do not run into the bar.
type progress struct {
	mu    sync.Mutex
	w     io.Writer
	on    bool
	tty   bool
	width int
	now   func() time.Time
	start time.Time
	// lastDraw and lastLine are when the bar was drawn, and a plain line
	// written, last.
	lastDraw, lastLine time.Time
	p                  audit.Progress
	drawn              bool // a bar is on the terminal's last line
	every              time.Duration
}

func newProgress(w io.Writer, on bool, now func() time.Time) *progress {
	// The first plain line comes after an interval: a short scan says
	// only how many workloads it judges, and how it ended.
	p := &progress{w: w, on: on, now: now, start: now(), width: 80, every: progressInterval}
	p.lastLine = p.start
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
		if width, _, err := term.GetSize(int(f.Fd())); err == nil && width > 20 {
			p.width = width
		}
	}
	return p
}

// Write writes a log line, clearing the bar first and redrawing it after.
func (p *progress) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		io.WriteString(p.w, "\r\033[K")
	}
	n, err := p.w.Write(b)
	if p.drawn {
		p.draw()
	}
	return n, err
}

// update is audit.Scanner.Progress.
func (p *progress) update(s audit.Progress) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	phaseChange := s.Total > 0 && p.p.Total == 0
	p.p = s
	t := p.now()
	switch {
	case p.tty:
		// Redraw at most ten times a second.
		if t.Sub(p.lastDraw) >= 100*time.Millisecond || phaseChange || (s.Total > 0 && s.Done == s.Total) {
			p.lastDraw = t
			p.draw()
		}
	case phaseChange || t.Sub(p.lastLine) >= p.every:
		p.lastLine = t
		fmt.Fprintln(p.w, p.line())
	}
}

// line says how far the scan is, in words.
func (p *progress) line() string {
	s := p.p
	if s.Total == 0 {
		return fmt.Sprintf("audit: listed %d objects", s.Listed)
	}
	return fmt.Sprintf("audit: judged %d of %d workloads (%d objects listed): %d would be denied, %d errors",
		s.Done, s.Total, s.Listed, s.WouldDeny, s.Errors)
}

// draw redraws the bar on the terminal's last line.
func (p *progress) draw() {
	s := p.p
	var text string
	if s.Total == 0 {
		text = fmt.Sprintf("listing workloads: %d objects", s.Listed)
	} else {
		tail := fmt.Sprintf(" %d/%d  would-deny %d  errors %d", s.Done, s.Total, s.WouldDeny, s.Errors)
		n := max(10, min(40, p.width-len(tail)-3))
		fill := n * s.Done / s.Total
		text = "[" + strings.Repeat("=", fill) + strings.Repeat(" ", n-fill) + "]" + tail
	}
	if len(text) > p.width-1 {
		text = text[:p.width-1]
	}
	io.WriteString(p.w, "\r\033[K"+text)
	p.drawn = true
}

// done ends the progress report: the bar is cleared, and one last line
// says what was judged and how long it took.
func (p *progress) done(r *audit.Report) {
	if !p.on {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		io.WriteString(p.w, "\r\033[K")
		p.drawn = false
	}
	if r == nil {
		return
	}
	fmt.Fprintf(p.w, "audit: judged %d workloads of %d objects listed in %s\n",
		r.Totals.Workloads, r.Listed, p.now().Sub(p.start).Round(100*time.Millisecond))
}

// maxListed is how many would-deny and failed workloads the table lists
// by name; the JSON report and `buildguard denials` have them all.
const maxListed = 50

// writeAuditReport writes the report as tables: by namespace, by rule,
// and the workloads that would be denied or could not be judged.
func writeAuditReport(w io.Writer, r *audit.Report, recorded bool) error {
	ew := &errWriter{w: w}
	excluded := ""
	if r.Excluded > 0 {
		excluded = fmt.Sprintf(", %d in excluded namespaces", r.Excluded)
	}
	fmt.Fprintf(ew, "Scan %s: %d objects listed, %d workloads judged (%d judged with their owner, %d inactive%s), %d images.\n",
		r.ID, r.Listed, r.Totals.Workloads, r.Covered, r.Inactive, excluded, r.Totals.Images)
	fmt.Fprintf(ew, "%d would be denied, %d warned, %d allowed, %d errors.\n", r.Totals.WouldDeny, r.Totals.Warn, r.Totals.Allow, r.Totals.Errors)
	if len(r.ByNamespace) > 0 {
		rows := [][]string{{"NAMESPACE", "WORKLOADS", "IMAGES", "WOULD-DENY", "WARN", "ERRORS"}}
		for _, n := range r.ByNamespace {
			rows = append(rows, []string{n.Namespace, itoa(n.Workloads), itoa(n.Images), itoa(n.WouldDeny), itoa(n.Warn), itoa(n.Errors)})
		}
		fmt.Fprintln(ew)
		writeColumns(ew, rows)
	}
	if len(r.ByRule) > 0 {
		rows := [][]string{{"RULE", "WORKLOADS", "IMAGES", "NAMESPACES", "WOULD-DENY", "WARN"}}
		for _, s := range r.ByRule {
			rows = append(rows, []string{s.Rule, itoa(s.Workloads), itoa(s.Images), itoa(s.Namespaces), itoa(s.WouldDeny), itoa(s.Warn)})
		}
		fmt.Fprintln(ew)
		writeColumns(ew, rows)
	}
	var denied, failed [][]string
	for _, res := range r.Workloads {
		workload := res.Namespace + "/" + strings.ToLower(res.Kind) + "/" + res.Name
		switch {
		case res.Error != "":
			failed = append(failed, []string{workload, shorten.Text(res.Error, 100)})
		case res.RecordError != "":
			failed = append(failed, []string{workload, "not recorded: " + shorten.Text(res.RecordError, 100)})
		}
		if res.Verdict == policy.WouldDeny {
			denied = append(denied, []string{workload, strings.Join(res.DenyRules, ",")})
		}
	}
	for _, l := range []struct {
		title string
		head  []string
		rows  [][]string
	}{
		{"Would be denied", []string{"WORKLOAD", "RULES"}, denied},
		{"Not judged or not recorded", []string{"WORKLOAD", "ERROR"}, failed},
	} {
		if len(l.rows) == 0 {
			continue
		}
		fmt.Fprintf(ew, "\n%s:\n", l.title)
		writeColumns(ew, append([][]string{l.head}, l.rows[:min(len(l.rows), maxListed)]...))
		if len(l.rows) > maxListed {
			fmt.Fprintf(ew, "… and %d more (--output json lists them all)\n", len(l.rows)-maxListed)
		}
	}
	if recorded && r.Totals.WouldDeny > 0 {
		fmt.Fprintf(ew, "\nRecorded as decisions of operation SCAN; list them with: buildguard denials --verdict would-deny\n")
	}
	return ew.err
}

// writeColumns writes rows as space-aligned columns.
func writeColumns(w io.Writer, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	tw.Flush()
}

func itoa(n int) string { return fmt.Sprint(n) }

// errWriter keeps the first write error, so a report is written without
// checking every line.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(b []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(b)
	e.err = err
	return n, err
}
