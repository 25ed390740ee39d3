package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/provenance"
	"buildguard.dev/buildguard/registry"
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

func check(ctx context.Context, args []string, stdout, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	var rf registryFlags
	rf.register(fs)
	var pvf provenanceFlags
	pvf.register(fs)
	output := fs.String("output", "text", "output format: text or json (one JSON object per image)")
	namespaceMode := fs.String("mode", "", "evaluate as in a namespace labelled buildguard.dev/mode=MODE")
	var sf storeFlags
	sf.register(fs)
	if err := parseFlags(fs, args, stderr); err != nil {
		return exitError, err
	}
	if rf.config == "" {
		return exitError, &usageError{msg: "--config is required"}
	}
	if *output != "text" && *output != "json" {
		return exitError, &usageError{msg: fmt.Sprintf("--output %q: want text or json", *output)}
	}
	if fs.NArg() == 0 {
		return exitError, &usageError{msg: "name at least one image"}
	}
	p, err := policy.ReadFile(rf.config)
	if err != nil {
		return exitError, err
	}
	if err := provenance.CheckTrust(p.Trust()); err != nil {
		return exitError, fmt.Errorf("policy %s: %w", rf.config, err)
	}
	e := &engine.Engine{
		Policies:  engine.PolicyFunc(func() *policy.Policy { return p }),
		Resolver:  rf.Client(nil),
		Keychains: registry.StaticKeychain{Auth: registry.DockerConfig()},
		Now:       time.Now,
		Timeout:   rf.Timeout,
	}
	e.Verifier = pvf.Verifier(e.Resolver)
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
		if *output == "json" {
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
