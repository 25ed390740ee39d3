package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"buildguard.dev/buildguard/app"
	checkpkg "buildguard.dev/buildguard/check"
	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/manifest"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/policysource"
	"buildguard.dev/buildguard/provenance"
)

// checkResult is one line of `check --output json`; docs/check.md is its
// schema.
type checkResult struct {
	Image     string               `json:"image"`
	Digest    string               `json:"digest"`
	Verdict   policy.Outcome       `json:"verdict"`
	Mode      policy.Mode          `json:"mode"`
	Admitted  bool                 `json:"admitted"`
	Findings  []policy.Finding     `json:"findings"`
	Exception *policy.ExceptionUse `json:"exception,omitempty"`
	CheckedAt time.Time            `json:"checkedAt"`
}

func check(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	var rf registryFlags
	rf.register(fs)
	var pvf provenanceFlags
	pvf.register(fs)
	var output string
	fs.StringVar(&output, "output", "text", "output format: text, json (one JSON object per image, or per workload with -f), junit or sarif (with -f)")
	fs.StringVar(&output, "o", "text", "short for --output")
	namespaceMode := fs.String("mode", "", "evaluate as in a namespace labelled buildguard.dev/mode=MODE")
	var files stringList
	fs.Var(&files, "filename", "manifest file or directory to judge, or - for standard input (repeatable)")
	fs.Var(&files, "f", "short for --filename")
	namespace := fs.String("namespace", checkpkg.DefaultNamespace, "with -f, the namespace of objects that name none")
	exceptionsFile := fs.String("exceptions-file", "", "with a policy file, a YAML file of namespaced exceptions applied with it, as serve --exceptions-file")
	var sf storeFlags
	sf.register(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return exitError, err
	}
	if rf.config == "" {
		return exitError, &usageError{msg: "--config is required"}
	}
	switch {
	case output != "text" && output != "json" && output != "junit" && output != "sarif":
		return exitError, &usageError{msg: fmt.Sprintf("--output %q: want text, json, junit or sarif", output)}
	case len(files) > 0 && fs.NArg() > 0:
		return exitError, &usageError{msg: fmt.Sprintf("judge images or manifests (-f), not both: unexpected arguments %q", fs.Args())}
	case len(files) == 0 && fs.NArg() == 0:
		return exitError, &usageError{msg: "name at least one image, or manifests with -f"}
	case len(files) == 0 && (output == "junit" || output == "sarif"):
		return exitError, &usageError{msg: "--output " + output + " is for manifests (-f)"}
	}
	if len(files) > 0 {
		return checkManifests(ctx, files, stdin, stdout, stderr, manifestCheck{rf: &rf, pvf: &pvf, sf: &sf, output: output,
			mode: *namespaceMode, namespace: *namespace, exceptionsFile: *exceptionsFile})
	}
	if *exceptionsFile != "" {
		return exitError, &usageError{msg: "--exceptions-file is for manifests (-f)"}
	}
	p, err := policy.ReadFile(rf.config)
	if err != nil {
		return exitError, err
	}
	if err := provenance.CheckTrust(p.Trust()); err != nil {
		return exitError, fmt.Errorf("policy %s: %w", rf.config, err)
	}
	e := app.NewEngine(rf.Registry, pvf.Provenance, nil, nil, nil)
	e.Policies = engine.PolicyFunc(func() *policy.Policy { return p })
	if *namespaceMode != "" {
		e.Namespaces = fixedLabels{engine.ModeLabel: *namespaceMode}
	}
	store, err := sf.open(ctx)
	if err != nil {
		return exitError, err
	}
	if store != nil {
		defer store.Close()
		e.Evidence = store
	}
	denied, registryErr := false, false
	enc := json.NewEncoder(stdout)
	for _, img := range fs.Args() {
		v, err := e.Evaluate(ctx, checkWorkload(img, *namespaceMode))
		if err != nil {
			return exitError, err
		}
		iv := v.Images[0]
		res := checkResult{Image: img, Digest: iv.Digest, Verdict: iv.Outcome, Mode: v.Mode, Admitted: v.Allowed,
			Findings: append(iv.Findings, v.Findings...), Exception: iv.Exception, CheckedAt: time.Now().UTC()}
		for _, f := range res.Findings {
			if f.Rule == policy.RuleRegistryUnavailable {
				registryErr = true
			}
		}
		denied = denied || !v.Allowed
		if output == "json" {
			if err := enc.Encode(res); err != nil {
				return exitError, err
			}
			continue
		}
		printText(stdout, res)
	}
	switch {
	case registryErr:
		// A registry that could not be asked leaves the answer unknown: an
		// error of this run, whatever else was found.
		return exitError, nil
	case denied:
		return exitDenied, nil
	}
	return exitOK, nil
}

// manifestCheck are the settings of `check -f`.
type manifestCheck struct {
	rf                      *registryFlags
	pvf                     *provenanceFlags
	sf                      *storeFlags
	output, mode, namespace string
	exceptionsFile          string
}

// checkManifests is `check -f`: it judges the workloads of the manifests
// named by files with the engine of the server, writes the report in the
// output format, and returns 2 if a workload could not be judged (or its
// registry asked), else 1 if one would be denied.
func checkManifests(ctx context.Context, files []string, stdin io.Reader, stdout, stderr io.Writer, mc manifestCheck) (int, error) {
	stream, err := manifest.ReadPaths(files, stdin)
	if err != nil {
		return exitError, err
	}
	ps, err := checkpkg.LoadPolicies(mc.rf.config, stream, mc.namespace)
	if err != nil {
		return exitError, err
	}
	for _, p := range ps.All {
		if err := provenance.CheckTrust(p.Trust()); err != nil {
			return exitError, fmt.Errorf("policy %s: %w", mc.rf.config, err)
		}
	}
	if mc.exceptionsFile != "" {
		if ps.CRD {
			return exitError, &usageError{msg: "--exceptions-file goes with a policy file; with ClusterBuildPolicies, exceptions are BuildPolicyException resources"}
		}
		xf, err := policysource.OpenExceptionFile(mc.exceptionsFile)
		if err != nil {
			return exitError, err
		}
		ps.Policies = xf.Policies(ps.Policies)
	}
	ns := checkpkg.NamespacesOf(stream)
	if mc.mode != "" {
		ns.Override = map[string]string{engine.ModeLabel: mc.mode}
	}
	e := app.NewEngine(mc.rf.Registry, mc.pvf.Provenance, nil, nil, nil)
	e.Policies, e.Namespaces = ps.Policies, ns
	store, err := mc.sf.open(ctx)
	if err != nil {
		return exitError, err
	}
	if store != nil {
		defer store.Close()
		e.Evidence = store
	}
	c := &checkpkg.Checker{Evaluator: e, Namespace: mc.namespace}
	r, err := c.Check(ctx, stream)
	if err != nil {
		return exitError, err
	}
	switch mc.output {
	case "json":
		err = checkpkg.WriteJSON(stdout, r)
	case "junit":
		err = checkpkg.WriteJUnit(stdout, r)
	case "sarif":
		err = checkpkg.WriteSARIF(stdout, r, version)
	default:
		err = checkpkg.WriteText(stdout, r)
	}
	if err != nil {
		return exitError, err
	}
	if len(r.Results) == 0 {
		fmt.Fprintf(stderr, "buildguard check: no workloads in %d objects of %s\n", r.Objects, strings.Join(files, ", "))
	}
	switch {
	case r.Failed():
		return exitError, nil
	case r.Denied():
		return exitDenied, nil
	}
	return exitOK, nil
}

// stringList is a flag that may be given more than once.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// checkWorkload is a Pod with one container running img, as `check`
// evaluates it.
func checkWorkload(img, mode string) engine.Workload {
	w := engine.Workload{Kind: "Pod", Name: "buildguard-check", Spec: podWithImage(img)}
	if mode != "" {
		w.Namespace = "buildguard-check"
	}
	return w
}

func printText(w io.Writer, r checkResult) {
	digest := r.Digest
	if digest == "" {
		digest = "(not resolved)"
	}
	verdict := strings.ToUpper(string(r.Verdict))
	if r.Verdict == policy.OutcomeDeny && r.Admitted {
		verdict = "WOULD DENY (" + string(r.Mode) + " mode)"
	}
	fmt.Fprintf(w, "%s\n  digest:  %s\n  verdict: %s\n", r.Image, digest, verdict)
	for _, f := range r.Findings {
		fmt.Fprintf(w, "  - [%s] %s (%s, %s)\n", f.Rule, f.Message, f.Severity, f.Action)
	}
	if r.Exception != nil {
		fmt.Fprintf(w, "  admitted by exception %s: %s (expires %s)\n", r.Exception.Name, r.Exception.Reason, r.Exception.Expires.Format(time.RFC3339))
	}
}
