package policy

import (
	"encoding/json"
	"fmt"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"unicode"
)

// StepKind names a suspicious behaviour of a build step.
type StepKind string

const (
	// StepRawIPDownload: a download from an IP literal not in trustedSources.
	StepRawIPDownload StepKind = "raw-ip-download"
	// StepUntrustedDownload: a download from a host name not in trustedSources.
	StepUntrustedDownload StepKind = "untrusted-download"
	// StepPipeToShell: downloaded content run by a shell or interpreter
	// without being written down first (curl … | sh, sh -c "$(curl …)").
	// Reported whatever the host: a trusted host can still serve a script
	// nobody reviewed.
	StepPipeToShell StepKind = "pipe-to-shell"
	// StepBase64Exec: a base64-decoded payload run by a shell.
	StepBase64Exec StepKind = "base64-exec"
	// StepChmodFetched: a file fetched from outside trustedSources, by this
	// step or an earlier one, is made executable.
	StepChmodFetched StepKind = "chmod-fetched"
	// StepExecFetched: a file fetched from outside trustedSources, by this
	// step or an earlier one, is run.
	StepExecFetched StepKind = "exec-fetched"
	// StepConnection: a network connection opened without a download tool
	// (/dev/tcp, nc, socat, telnet, an interpreter's socket) to a host
	// outside trustedSources.
	StepConnection StepKind = "raw-connection"
	// StepReverseShell: a shell whose input and output are a network
	// connection. Reported whatever the host.
	StepReverseShell StepKind = "reverse-shell"
	// StepCryptoMiner: a mining pool address (stratum URL, a miner's
	// -o host:port) or a known miner run. Reported whatever the host.
	StepCryptoMiner StepKind = "crypto-miner"
	// StepCloudProbe: the step reaches for the build host's credentials:
	// a cloud metadata service or a Kubernetes service-account token.
	StepCloudProbe StepKind = "cloud-probe"
)

// StepFinding is one suspicious behaviour found in a build step.
type StepFinding struct {
	Kind   StepKind
	Host   string // the host or IP involved, when there is one
	URL    string // the URL or host:port as written, at most 200 bytes, when there is one
	Detail string // one short sentence, e.g. "downloads from raw IP 203.0.113.9 with wget"
	// Verified names how the step checked what it fetched ("sha256sum",
	// "gpg --verify"), for downloads and for fetched files made executable
	// or run; "" when it did not.
	Verified string
	// CrossStep is true when the file was fetched by an earlier step,
	// FetchedIn (a history index): the finding joins the two steps.
	CrossStep bool
	FetchedIn int
}

// ConfigStep is the StepReport.Index of the image config's run command
// (Entrypoint and Cmd) and environment, which are judged like a step.
const ConfigStep = -1

// StepReport is what the analysis found in one history entry, or in the
// image config (Index ConfigStep).
type StepReport struct {
	Index    int
	Step     string // created_by, or the config's run command
	Findings []StepFinding
}

// RunConfig is the part of an image config that says what the image runs
// and with which environment.
type RunConfig struct {
	Env        []string // KEY=value
	Entrypoint []string
	Cmd        []string
	WorkingDir string
}

// Limits that keep analysis linear and bounded on hostile input.
const (
	maxStepBytes    = 64 << 10
	maxStepDepth    = 4
	maxURLBytes     = 200
	maxStepFindings = 64
	// maxStepWork bounds the bytes one step may have lexed, nested
	// scripts, substitutions and written texts included.
	maxStepWork    = 8 * maxStepBytes
	maxFetchedKept = 4096
)

// AnalyzeStep examines one image history entry's created_by on its own,
// in the classic builder's form ("/bin/sh -c #(nop) ADD …", "/bin/sh -c
// curl …", "|1 V=1 /bin/sh -c …") or BuildKit's ("RUN /bin/sh -c … #
// buildkit", "ADD https://… /x # buildkit"), and returns what it finds,
// in order of appearance, each once. Variables the step assigns and its
// build args are expanded; AnalyzeHistory also knows the image's
// environment and earlier steps. Steps longer than 64 KiB are analysed
// up to that length.
func AnalyzeStep(createdBy string, trusted Sources) []StepFinding {
	img := newImageAnalysis(trusted, RunConfig{})
	return img.step(0, createdBy)
}

// AnalyzeHistory analyses the history of one image (one platform), oldest
// step first, then its config's run command and environment. Each step is
// judged with the environment it ran in (the ENV and ARG steps before it,
// its own build args, the config's Env for what history does not say),
// with the working directory WORKDIR gave it, and knowing which files
// earlier steps fetched from outside trustedSources, so that a fetch in
// one step and a chmod +x or run in another are reported together. Only
// entries with findings are returned.
func AnalyzeHistory(history []History, cfg RunConfig, trusted Sources) []StepReport {
	img := newImageAnalysis(trusted, cfg)
	var out []StepReport
	for i, h := range history {
		if h.CreatedBy == "" {
			continue
		}
		if fs := img.step(i, h.CreatedBy); len(fs) > 0 {
			out = append(out, StepReport{Index: i, Step: h.CreatedBy, Findings: fs})
		}
	}
	if r, ok := img.config(out); ok {
		out = append(out, r)
	}
	return out
}

// imageAnalysis is what the steps of one image share.
type imageAnalysis struct {
	trusted Sources
	cfg     RunConfig
	// env is the environment as ENV steps left it, over the config's Env.
	env map[string]string
	// argDefaults are the defaults of ARG steps.
	argDefaults map[string]string
	workdir     string
	// fetched are the files earlier steps fetched from outside
	// trustedSources, by absolute path, and by base name for paths that
	// could not be made absolute.
	fetched map[string]*fetchRec
	byBase  map[string][]*fetchRec
	// dirs are directories earlier steps fetched whole (git clone).
	dirs []*fetchRec
}

func newImageAnalysis(trusted Sources, cfg RunConfig) *imageAnalysis {
	img := &imageAnalysis{trusted: trusted, cfg: cfg, env: map[string]string{}, argDefaults: map[string]string{},
		fetched: map[string]*fetchRec{}, byBase: map[string][]*fetchRec{}, workdir: "/"}
	for _, kv := range cfg.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && validName(k) {
			img.env[k] = v
		}
	}
	return img
}

// fetchRec is one download and where it was written.
type fetchRec struct {
	tool, host, url string
	files           []string // absolute when the working directory was known
	dirs            []string // directories whose every file was fetched (git clone)
	trusted         bool
	verified        string
	step            int
}

// parsedStep is one history entry taken apart.
type parsedStep struct {
	instr  string            // RUN, ADD, CMD, ENV, …
	args   map[string]string // build args of a RUN ("|2 A=1 B=2")
	script string            // RUN: the shell script or command
	rest   string            // other instructions: their arguments
}

var instructions = map[string]bool{
	"ADD": true, "ARG": true, "CMD": true, "COPY": true, "ENTRYPOINT": true, "ENV": true, "EXPOSE": true,
	"FROM": true, "HEALTHCHECK": true, "LABEL": true, "MAINTAINER": true, "ONBUILD": true, "RUN": true,
	"SHELL": true, "STOPSIGNAL": true, "USER": true, "VOLUME": true, "WORKDIR": true,
}

// parseStep splits a history entry into its instruction and arguments.
func parseStep(s string) parsedStep {
	s = strings.TrimSpace(s)
	s = strings.TrimSpace(strings.TrimSuffix(s, "# buildkit"))
	// Classic metadata steps: "/bin/sh -c #(nop)  ENV A=1".
	if i := strings.Index(s, "#(nop)"); i >= 0 && i < 64 && isShellPrefix(s[:i]) {
		return parseStep(s[i+len("#(nop)"):])
	}
	word, rest, _ := strings.Cut(s, " ")
	rest = strings.TrimSpace(rest)
	switch {
	case word == "RUN":
		return parseRun(rest)
	case len(word) > 1 && word[0] == '|' && allDigits(word[1:]):
		return parseRun(s) // classic RUN with build args
	case instructions[word]:
		return parsedStep{instr: word, rest: rest}
	}
	return parseRun(s) // classic shell or exec form RUN
}

func isShellPrefix(s string) bool {
	f := strings.Fields(s)
	return len(f) >= 1 && (isShell(f[0]) || strings.EqualFold(f[0], "cmd")) && (len(f) == 1 || strings.HasPrefix(f[len(f)-1], "-") || strings.HasPrefix(f[len(f)-1], "/"))
}

// parseRun takes a RUN's arguments apart: build args ("|N K=V …"), flags
// (--mount=…), the shell and its options ("/bin/bash -o pipefail -c"), and
// the exec form (["/bin/sh","-c","…"]).
func parseRun(s string) parsedStep {
	st := parsedStep{instr: "RUN"}
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "|") {
		st.args, s = parseBuildArgs(s)
	}
	for strings.HasPrefix(s, "--") {
		_, r, ok := strings.Cut(s, " ")
		if !ok {
			return st
		}
		s = strings.TrimSpace(r)
	}
	if strings.HasPrefix(s, "[") {
		words := execForm(s)
		if sc, ok := shellScript(words); ok {
			st.script = sc
		} else {
			st.script = shellQuoteJoin(words)
		}
		return st
	}
	st.script = stripShell(s)
	return st
}

// stripShell removes a leading "/bin/sh -c" (with any options of the
// shell before -c) or "cmd /S /C" from a RUN's text.
func stripShell(s string) string {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return s
	}
	if strings.EqualFold(fields[0], "cmd") || strings.EqualFold(path.Base(fields[0]), "cmd.exe") {
		for i := 1; i < len(fields) && i < 4; i++ {
			if strings.EqualFold(fields[i], "/C") {
				return restAfterField(s, i)
			}
		}
		return s
	}
	if !isShell(fields[0]) {
		return s
	}
	for i := 1; i < len(fields) && i < 16; i++ {
		f := fields[i]
		switch {
		case isShellCFlag(f):
			return restAfterField(s, i)
		case takesOption(f):
			i++
		case strings.HasPrefix(f, "-") || strings.HasPrefix(f, "+"):
		default:
			return s // "sh script.sh": a script file run by a shell
		}
	}
	return s
}

// isShellCFlag reports whether a shell option is -c, alone or last in a
// group ("-ec", "-euxc").
func isShellCFlag(f string) bool {
	if len(f) < 2 || f[0] != '-' || f[1] == '-' || f[len(f)-1] != 'c' {
		return false
	}
	for _, r := range f[1:] {
		if !unicode.IsLetter(r) {
			return false
		}
	}
	return true
}

// takesOption reports whether a shell flag takes the next word as its
// value: -o pipefail, +o, -eo pipefail.
func takesOption(f string) bool {
	return len(f) >= 2 && (f[0] == '-' || f[0] == '+') && f[1] != '-' && f[len(f)-1] == 'o'
}

// restAfterField returns s after its i-th white-space separated field,
// keeping the text's own spacing.
func restAfterField(s string, i int) string {
	for k := 0; k <= i; k++ {
		s = strings.TrimLeft(s, " \t")
		j := strings.IndexAny(s, " \t")
		if j < 0 {
			return ""
		}
		s = s[j:]
	}
	return strings.TrimLeft(s, " \t")
}

// parseBuildArgs parses "|N K=V … rest". Values are written unquoted, so a
// value with spaces runs on until the next K= or, for the last one, until
// the command starts.
func parseBuildArgs(s string) (map[string]string, string) {
	head, rest, _ := strings.Cut(s, " ")
	n, err := strconv.Atoi(head[1:])
	if err != nil || n < 0 {
		return nil, rest
	}
	args := map[string]string{}
	toks := strings.Split(rest, " ")
	i := 0
	for k := 0; k < n && i < len(toks); k++ {
		key, val, ok := strings.Cut(toks[i], "=")
		if !ok || !validName(key) {
			break
		}
		i++
		for i < len(toks) {
			t := toks[i]
			if k < n-1 {
				if nk, _, ok := strings.Cut(t, "="); ok && validName(nk) {
					break
				}
			} else if t == "" || strings.HasPrefix(t, "/") || strings.HasPrefix(t, "[") || isShell(t) || strings.HasPrefix(t, "--") {
				break
			}
			val += " " + t
			i++
		}
		args[key] = val
	}
	return args, strings.Join(toks[i:], " ")
}

// shellScript returns the script of an exec form that runs a shell with -c.
func shellScript(words []string) (string, bool) {
	if len(words) < 3 || !isShell(words[0]) {
		return "", false
	}
	for i := 1; i < len(words)-1; i++ {
		if isShellCFlag(words[i]) {
			return words[i+1], true
		}
		if takesOption(words[i]) {
			i++
			continue
		}
		if !strings.HasPrefix(words[i], "-") && !strings.HasPrefix(words[i], "+") {
			return "", false
		}
	}
	return "", false
}

// execForm parses an exec form leniently: JSON (["a","b"]), Go's %q of a
// string slice (["a" "b"]), which both builders write for CMD and
// ENTRYPOINT, or old Docker's unquoted [a b].
func execForm(s string) []string {
	s = strings.TrimSpace(s)
	var words []string
	if err := json.Unmarshal([]byte(s), &words); err == nil {
		return words
	}
	inner := strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
	if strings.Contains(inner, `"`) {
		var out []string
		for i := 0; i < len(inner); i++ {
			if inner[i] != '"' {
				continue
			}
			j := i + 1
			for j < len(inner) && inner[j] != '"' {
				if inner[j] == '\\' {
					j++
				}
				j++
			}
			j = min(j, len(inner))
			lit := inner[i:min(j+1, len(inner))]
			if u, err := strconv.Unquote(lit); err == nil {
				out = append(out, u)
			} else {
				out = append(out, strings.Trim(lit, `"`))
			}
			i = j
		}
		return out
	}
	return strings.Fields(inner)
}

func shellQuoteJoin(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// step analyses history entry i.
func (img *imageAnalysis) step(i int, createdBy string) []StepFinding {
	if len(createdBy) > maxStepBytes {
		createdBy = createdBy[:maxStepBytes]
	}
	a := img.newStep(i)
	st := parseStep(createdBy)
	if st.instr == "ONBUILD" {
		// A trigger runs in every build FROM this image: judge what it runs.
		st = parseStep(st.rest)
	}
	switch st.instr {
	case "RUN":
		a.args = st.args
		a.run(st.script, 0, "")
	case "ADD":
		a.add(st.rest)
	case "CMD", "ENTRYPOINT":
		a.runCommand(execForm(st.rest), st.rest)
	case "ENV", "ARG":
		img.setVars(st.instr, st.rest, a)
	case "WORKDIR":
		dir := expandText(nil, st.rest, a.lookup, 0)
		if path.IsAbs(dir) {
			img.workdir = path.Clean(dir)
		} else {
			img.workdir = path.Join(img.workdir, dir)
		}
	case "HEALTHCHECK", "LABEL":
		a.scanText(st.rest, "")
	}
	a.finish()
	return a.out
}

// setVars applies an ENV or ARG step: "K=V K2=V2", the legacy "K V", or a
// bare "ARG K". Values are scanned for connections and pools.
func (img *imageAnalysis) setVars(instr, rest string, a *stepAnalysis) {
	a.scanText(rest, "")
	for _, kv := range splitAssignments(rest) {
		v := expandText(nil, kv[1], a.lookup, 0)
		if instr == "ENV" {
			img.env[kv[0]] = v
		} else if kv[2] == "=" {
			img.argDefaults[kv[0]] = v
		}
	}
}

// splitAssignments parses "K=V K2=V2" (values unquoted by the builder, so
// a value runs on to the next K=) or the legacy "K V".
func splitAssignments(s string) [][3]string {
	s = strings.TrimSpace(s)
	toks := strings.Fields(s)
	if len(toks) == 0 {
		return nil
	}
	if k, _, ok := strings.Cut(toks[0], "="); !ok || !validName(k) {
		if !validName(toks[0]) {
			return nil
		}
		return [][3]string{{toks[0], unquote(strings.TrimSpace(strings.TrimPrefix(s, toks[0]))), " "}}
	}
	var out [][3]string
	for _, t := range toks {
		if k, v, ok := strings.Cut(t, "="); ok && validName(k) {
			out = append(out, [3]string{k, v, "="})
			continue
		}
		if len(out) > 0 {
			out[len(out)-1][1] += " " + t
		} else if validName(t) {
			out = append(out, [3]string{t, "", ""})
		}
	}
	for i := range out {
		out[i][1] = unquote(out[i][1])
	}
	return out
}

func unquote(v string) string {
	if len(v) >= 2 && (v[0] == '"' && v[len(v)-1] == '"' || v[0] == '\'' && v[len(v)-1] == '\'') {
		return v[1 : len(v)-1]
	}
	return v
}

// config judges the config's run command and environment, reporting what
// no history step already reported.
func (img *imageAnalysis) config(reports []StepReport) (StepReport, bool) {
	a := img.newStep(ConfigStep)
	for _, kv := range img.cfg.Env {
		a.scanText(kv, "")
	}
	run := append(append([]string(nil), img.cfg.Entrypoint...), img.cfg.Cmd...)
	if img.cfg.WorkingDir != "" && path.IsAbs(img.cfg.WorkingDir) {
		a.cwd = path.Clean(img.cfg.WorkingDir)
	}
	if len(run) > 0 {
		a.runCommand(run, "")
	}
	a.finish()
	seen := map[string]bool{}
	for _, r := range reports {
		for _, f := range r.Findings {
			seen[string(f.Kind)+"\x00"+f.Host+"\x00"+f.URL] = true
		}
	}
	var fs []StepFinding
	for _, f := range a.out {
		if !seen[string(f.Kind)+"\x00"+f.Host+"\x00"+f.URL] {
			fs = append(fs, f)
		}
	}
	if len(fs) == 0 {
		return StepReport{}, false
	}
	step := shellQuoteJoin(run)
	if len(run) == 0 {
		step = "Env"
	}
	return StepReport{Index: ConfigStep, Step: step, Findings: fs}, true
}

// runCommand judges a CMD, ENTRYPOINT or the config's run command: a
// shell's -c script as a script, anything else as the words it is. One
// word with spaces in it is also read as the command it was meant to be.
func (a *stepAnalysis) runCommand(words []string, raw string) {
	if len(words) == 0 {
		if strings.TrimSpace(raw) != "" && !strings.HasPrefix(strings.TrimSpace(raw), "[") {
			a.run(raw, 0, "") // shell form as old builders wrote it
		}
		return
	}
	if sc, ok := shellScript(words); ok {
		a.run(sc, 0, "")
		return
	}
	a.run(shellQuoteJoin(words), 0, "")
	for _, w := range words {
		if strings.ContainsAny(w, " \t") {
			a.run(w, 1, "")
		}
	}
}

// stepAnalysis is the analysis of one step.
type stepAnalysis struct {
	img      *imageAnalysis
	index    int
	trusted  Sources
	out      []StepFinding
	verifyOn []verifyRef // findings whose Verified is set when the step ends
	fetches  []*fetchRec // this step's downloads
	checks   []check     // this step's checksum and signature checks
	written  map[string][]string
	args     map[string]string
	vars     map[string][]string
	cwd      string // "" when unknown
	cond     int    // depth of if/case/loops: assignments there may not happen
	work     int
	// echoed are texts echoed to standard output since the last command
	// that was not an echo: a group redirected as a whole writes them.
	echoed []string
}

type verifyRef struct {
	finding int
	rec     *fetchRec
}

// check is a checksum or signature check and what it names: its
// arguments and the text it read.
type check struct {
	tool  string
	names map[string]bool
}

func (img *imageAnalysis) newStep(i int) *stepAnalysis {
	return &stepAnalysis{img: img, index: i, trusted: img.trusted, cwd: img.workdir, vars: map[string][]string{}, written: map[string][]string{}}
}

// lookup returns a variable's candidate values: what the step assigned,
// its build args, the image's environment, ARG defaults.
func (a *stepAnalysis) lookup(name string) ([]string, bool) {
	if v, ok := a.vars[name]; ok {
		return v, true
	}
	if v, ok := a.args[name]; ok {
		return []string{v}, true
	}
	if v, ok := a.img.env[name]; ok {
		return []string{v}, true
	}
	if v, ok := a.img.argDefaults[name]; ok {
		return []string{v}, true
	}
	return nil, false
}

// assign sets a variable. Where the assignment may not happen (inside
// if, case, loops, after && or ||) the value joins the ones the variable
// may already have, so that no branch hides a value from the analysis.
func (a *stepAnalysis) assign(name string, vals []string, maybe bool) {
	if len(vals) == 0 {
		vals = []string{""}
	}
	if !maybe {
		a.vars[name] = dedupe(vals, maxCandidates)
		return
	}
	old, ok := a.lookup(name)
	if !ok {
		old = nil
	}
	a.vars[name] = dedupe(append(append([]string(nil), old...), vals...), maxCandidates)
}

func dedupe(vals []string, n int) []string {
	out := make([]string, 0, min(len(vals), n))
	for _, v := range vals {
		if len(out) >= n {
			break
		}
		dup := false
		for _, o := range out {
			if o == v {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, v)
		}
	}
	return out
}

func (a *stepAnalysis) report(f StepFinding) int {
	// Hosts and URLs come from untrusted text: keep them on one line.
	f.Host = printable(f.Host)
	f.URL = clip(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, f.URL))
	for i, g := range a.out {
		if g.Kind == f.Kind && g.Host == f.Host && g.URL == f.URL {
			return i
		}
	}
	if len(a.out) >= maxStepFindings {
		return -1
	}
	a.out = append(a.out, f)
	return len(a.out) - 1
}

// finish decides which downloads the step verified, and remembers the
// untrusted files it fetched for the steps after it.
func (a *stepAnalysis) finish() {
	for _, r := range a.fetches {
		if r.trusted || r.verified != "" {
			continue
		}
		for _, c := range a.checks {
			if namesAny(c.names, r.files) {
				r.verified = c.tool
				break
			}
		}
	}
	for _, v := range a.verifyOn {
		if v.finding >= 0 && v.rec.verified != "" && a.out[v.finding].Verified == "" {
			a.out[v.finding].Verified = v.rec.verified
			a.out[v.finding].Detail += ", verified with " + v.rec.verified
		}
	}
	img := a.img
	for _, r := range a.fetches {
		if r.trusted {
			continue
		}
		if len(r.dirs) > 0 && len(img.dirs) < maxFetchedKept {
			img.dirs = append(img.dirs, r)
		}
		for _, f := range r.files {
			if len(img.fetched) >= maxFetchedKept {
				return
			}
			if path.IsAbs(f) {
				img.fetched[f] = r
			}
			b := path.Base(f)
			img.byBase[b] = append(img.byBase[b], r)
		}
	}
}

// namesAny reports whether a check names one of files: the file itself,
// its base name, or a signature or checksum file next to it (file.asc,
// file.sha256).
func namesAny(names map[string]bool, files []string) bool {
	for _, f := range files {
		b := path.Base(f)
		if b == "." || b == "/" || b == "-" || b == "" {
			continue
		}
		if names[f] || names[b] {
			return true
		}
		for n := range names {
			if strings.HasPrefix(n, b+".") {
				return true
			}
		}
	}
	return false
}

// resolve makes p absolute against the working directory, when it is known.
func (a *stepAnalysis) resolve(p string) (string, bool) {
	if p == "" || strings.HasPrefix(p, "~") || strings.Contains(p, "$") {
		return p, false
	}
	if path.IsAbs(p) {
		return path.Clean(p), true
	}
	if a.cwd == "" {
		return p, false
	}
	return path.Join(a.cwd, p), true
}

// fetchedFile returns the download that wrote file p, by this step (only
// untrusted ones) or an earlier one.
func (a *stepAnalysis) fetchedFile(p string, asProgram bool) *fetchRec {
	if p == "" || p == "-" || !a.anyFetched(path.Base(p)) {
		return nil
	}
	abs, ok := a.resolve(p)
	if asProgram && !strings.Contains(p, "/") {
		// A bare program name is looked up in PATH.
		for _, dir := range a.pathDirs() {
			if r := a.fetchedAt(path.Join(dir, p), true); r != nil {
				return r
			}
		}
		return nil
	}
	return a.fetchedAt(abs, ok)
}

// anyFetched reports whether a file named base may have been fetched
// from outside trustedSources: most commands of most steps are not, and
// this answers them without building paths.
func (a *stepAnalysis) anyFetched(base string) bool {
	if len(a.img.byBase[base]) > 0 || len(a.img.dirs) > 0 {
		return true
	}
	for _, r := range a.fetches {
		if r.trusted {
			continue
		}
		if len(r.dirs) > 0 {
			return true
		}
		for _, f := range r.files {
			if path.Base(f) == base {
				return true
			}
		}
	}
	return false
}

func (a *stepAnalysis) pathDirs() []string {
	if v, ok := a.lookup("PATH"); ok && len(v) > 0 {
		return strings.Split(v[0], ":")
	}
	return []string{"/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}
}

func (a *stepAnalysis) fetchedAt(p string, abs bool) *fetchRec {
	base := path.Base(p)
	for i := len(a.fetches) - 1; i >= 0; i-- {
		r := a.fetches[i]
		if r.trusted {
			continue
		}
		for _, f := range r.files {
			if f == p || (!abs || !path.IsAbs(f)) && path.Base(f) == base {
				return r
			}
		}
		for _, d := range r.dirs {
			if abs && path.IsAbs(d) && strings.HasPrefix(p, d+"/") {
				return r
			}
		}
	}
	if abs {
		if r, ok := a.img.fetched[p]; ok {
			return r
		}
		for _, r := range a.img.dirs {
			for _, d := range r.dirs {
				if path.IsAbs(d) && strings.HasPrefix(p, d+"/") {
					return r
				}
			}
		}
		// Files fetched where the directory was unknown match by name.
		for _, r := range a.img.byBase[base] {
			for _, f := range r.files {
				if !path.IsAbs(f) && path.Base(f) == base {
					return r
				}
			}
		}
		return nil
	}
	if rs := a.img.byBase[base]; len(rs) > 0 {
		return rs[len(rs)-1]
	}
	return nil
}

// add analyses an ADD instruction: every source that is a URL is a
// download; --chmod with an executable bit on a fetched file is reported;
// --checksum verifies it.
func (a *stepAnalysis) add(args string) {
	words := lex(args).words()
	var srcs []string
	execMode, checksum := false, false
	for _, w := range words {
		if m, ok := strings.CutPrefix(w, "--chmod="); ok {
			execMode = executableMode(m)
			continue
		}
		if strings.HasPrefix(w, "--checksum=") {
			checksum = true
			continue
		}
		if strings.HasPrefix(w, "--") {
			continue
		}
		srcs = append(srcs, w)
	}
	if len(srcs) < 2 {
		return
	}
	dest := srcs[len(srcs)-1]
	dest = expandText(nil, dest, a.lookup, 0)
	for _, s := range srcs[:len(srcs)-1] {
		s = expandText(nil, s, a.lookup, 0)
		host, ok := urlHost(s)
		if !ok {
			continue
		}
		file := dest
		if strings.HasSuffix(dest, "/") {
			file = path.Join(dest, path.Base(urlPath(s)))
		}
		if abs, ok := a.resolve(file); ok {
			file = abs
		}
		r := a.download("ADD", host, s, file)
		if checksum {
			r.verified = "ADD --checksum"
		}
		if execMode && !r.trusted {
			a.verifyOn = append(a.verifyOn, verifyRef{a.report(StepFinding{Kind: StepChmodFetched, Host: r.host, URL: clip(s),
				Detail: fmt.Sprintf("ADD --chmod makes %s, fetched from %s, executable", dest, r.host)}), r})
		}
	}
}

// download records a download and reports it unless its source is
// trusted. Cloud metadata addresses are reported as a probe whatever the
// policy trusts.
func (a *stepAnalysis) download(tool, host, rawURL string, files ...string) *fetchRec {
	canon, ip, ok := canonicalHost(host)
	if !ok {
		// Not a name or an address a client could reach, but still what the
		// step asked for: report it printable.
		canon = strings.Map(func(r rune) rune {
			if unicode.IsSpace(r) || unicode.IsControl(r) {
				return '?'
			}
			return r
		}, host)
	}
	r := &fetchRec{tool: tool, host: canon, url: rawURL, files: files, step: a.index}
	r.trusted = ok && a.trusted.TrustedURL(canon, urlPath(rawURL))
	a.fetches = append(a.fetches, r)
	if ForbiddenHost(canon) {
		r.trusted = false
		a.report(StepFinding{Kind: StepCloudProbe, Host: canon, URL: clip(rawURL), Detail: fmt.Sprintf("reaches the cloud metadata service at %s with %s", canon, tool)})
		return r
	}
	if r.trusted {
		return r
	}
	var f StepFinding
	if ip {
		f = StepFinding{Kind: StepRawIPDownload, Host: canon, URL: clip(rawURL), Detail: fmt.Sprintf("downloads from raw IP %s with %s", canon, tool)}
	} else {
		f = StepFinding{Kind: StepUntrustedDownload, Host: canon, URL: clip(rawURL), Detail: fmt.Sprintf("downloads from untrusted host %s with %s", canon, tool)}
	}
	a.verifyOn = append(a.verifyOn, verifyRef{a.report(f), r})
	return r
}

func clip(s string) string {
	if len(s) <= maxURLBytes {
		return s
	}
	cut := maxURLBytes
	for cut > 0 && !utf8RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// urlPath returns the path of a URL as a client would request it, for
// matching URL prefixes: "/tianon/gosu/releases/…". scp-like git
// addresses and Go module paths have their path after the host too.
func urlPath(s string) string {
	s = strings.Trim(s, `"'`)
	rest := s
	if _, r, ok := strings.Cut(s, "://"); ok {
		rest = r
	} else if strings.HasPrefix(s, "git@") {
		if _, r, ok := strings.Cut(s, ":"); ok {
			return "/" + strings.TrimPrefix(r, "/")
		}
	}
	i := strings.IndexByte(rest, '/')
	if i < 0 {
		return "/"
	}
	p := rest[i:]
	if j := strings.IndexAny(p, "?#@"); j >= 0 {
		p = p[:j]
	}
	return p
}

// executableMode reports whether a chmod mode grants execute: symbolic
// with x ("+x", "u+x", "a=rwx") or octal with an odd digit ("755").
func executableMode(m string) bool {
	if m == "" {
		return false
	}
	if allDigits(m) {
		if len(m) > 4 {
			return false
		}
		for _, c := range m[max(0, len(m)-3):] {
			if c > '7' {
				return false
			}
			if (c-'0')&1 == 1 {
				return true
			}
		}
		return false
	}
	return strings.ContainsAny(m, "+=") && strings.Contains(m, "x")
}

// urlHost returns the host of a URL with a scheme (http, https, ftp, git,
// ssh, git+https …) or of an scp-like git address (git@host:org/repo).
func urlHost(s string) (string, bool) {
	s = strings.Trim(s, `"'`)
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		if at := strings.IndexByte(s, '@'); at > 0 && strings.HasPrefix(s, "git@") {
			if h, _, ok := strings.Cut(s[at+1:], ":"); ok && h != "" {
				return h, true
			}
		}
		return "", false
	}
	switch strings.ToLower(strings.TrimPrefix(scheme, "git+")) {
	case "http", "https", "ftp", "ftps", "git", "ssh", "sftp", "rsync", "tftp", "s3", "hg+http", "hg+https", "svn+http", "svn+https":
	default:
		return "", false
	}
	auth := rest
	if i := strings.IndexAny(auth, "/?#"); i >= 0 {
		auth = auth[:i]
	}
	if i := strings.LastIndexByte(auth, '@'); i >= 0 {
		auth = auth[i+1:]
	}
	host := auth
	if strings.HasPrefix(host, "[") {
		if i := strings.IndexByte(host, ']'); i >= 0 {
			host = host[:i+1]
		}
	} else if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	if h, err := url.PathUnescape(host); err == nil {
		host = h
	}
	if host == "" {
		return "", false
	}
	return host, true
}

// barehost recognises a scheme-less URL curl and wget accept:
// "203.0.113.9/x", "example.com:8080/p".
func barehost(s string) (string, bool) {
	s = strings.Trim(s, `"'`)
	if strings.HasPrefix(s, "/") || strings.HasPrefix(s, ".") || strings.HasPrefix(s, "$") || strings.Contains(s, "=") {
		return "", false
	}
	host := s
	if i := strings.IndexAny(host, "/?#"); i >= 0 {
		host = host[:i]
	}
	if i := strings.LastIndexByte(host, ':'); i >= 0 && allDigits(host[i+1:]) {
		host = host[:i]
	}
	canon, ip, ok := canonicalHost(host)
	if !ok || (!ip && !strings.Contains(canon, ".")) {
		return "", false
	}
	if !ip {
		// A bare word with a dot is as likely a file name ("app.tar.gz");
		// only count it when it has a path or a port.
		if !strings.ContainsAny(s[len(host):], "/:") {
			return "", false
		}
	}
	return canon, true
}

// maxMemoImages bounds a policy's memo of analysed images; when full it
// starts over.
const maxMemoImages = 4096

// stepMemo remembers AnalyzeHistory's answers for one policy's trusted
// sources, by config digest: a config digest fixes the history and the
// run config, and the same images come back with every admission. It only
// memoizes a pure function: Decide stays pure.
type stepMemo struct {
	mu sync.Mutex
	m  map[string][]StepReport
}

func (s *stepMemo) analyze(pl Platform, trusted Sources) []StepReport {
	if s == nil || pl.ConfigDigest == "" {
		return AnalyzeHistory(pl.History, pl.Config, trusted)
	}
	s.mu.Lock()
	r, ok := s.m[pl.ConfigDigest]
	s.mu.Unlock()
	if ok {
		return r
	}
	r = AnalyzeHistory(pl.History, pl.Config, trusted)
	s.mu.Lock()
	if s.m == nil || len(s.m) >= maxMemoImages {
		s.m = map[string][]StepReport{}
	}
	s.m[pl.ConfigDigest] = r
	s.mu.Unlock()
	return r
}

// kindsOf lists the kinds of findings, sorted, for comparing reports.
func kindsOf(fs []StepFinding) string {
	k := make([]string, 0, len(fs))
	for _, f := range fs {
		k = append(k, string(f.Kind)+"\x00"+f.Host+"\x00"+f.URL+"\x00"+f.Verified)
	}
	sort.Strings(k)
	return strings.Join(k, "\x01")
}
