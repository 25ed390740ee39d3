package policy

import (
	"encoding/json"
	"fmt"
	"net/url"
	"path"
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
	// StepChmodFetched: a file the same step downloaded is made executable.
	StepChmodFetched StepKind = "chmod-fetched"
)

// StepFinding is one suspicious behaviour found in a build step.
type StepFinding struct {
	Kind   StepKind
	Host   string // the host or IP downloaded from, when there is one
	URL    string // the URL as written, at most 200 bytes, when there is one
	Detail string // one short sentence, e.g. "downloads from raw IP 203.0.113.9 with wget"
}

// Limits that keep analysis linear and bounded on hostile input.
const (
	maxStepBytes = 64 << 10
	maxStepDepth = 4
	maxURLBytes  = 200
)

// AnalyzeStep examines one image history entry's created_by, in the
// classic builder's form ("/bin/sh -c #(nop) ADD …", "/bin/sh -c curl …")
// or BuildKit's ("RUN /bin/sh -c … # buildkit", "ADD https://… /x #
// buildkit"), and returns what it finds, in order of appearance, each
// once. Steps longer than 64 KiB are analysed up to that length.
func AnalyzeStep(createdBy string, trusted Sources) []StepFinding {
	if len(createdBy) > maxStepBytes {
		createdBy = createdBy[:maxStepBytes]
	}
	a := &stepAnalysis{trusted: trusted}
	instr, rest := splitInstruction(createdBy)
	switch instr {
	case "ADD":
		a.add(rest)
	case "RUN":
		a.shell(runCommand(rest), 0)
	}
	return a.out
}

type stepAnalysis struct {
	trusted Sources
	out     []StepFinding
}

func (a *stepAnalysis) report(f StepFinding) {
	for _, g := range a.out {
		if g.Kind == f.Kind && g.Host == f.Host && g.URL == f.URL {
			return
		}
	}
	a.out = append(a.out, f)
}

// splitInstruction returns the Dockerfile instruction a history entry
// records and its arguments.
func splitInstruction(s string) (instr, rest string) {
	s = strings.TrimSpace(s)
	s = strings.TrimSpace(strings.TrimSuffix(s, "# buildkit"))
	for _, sh := range []string{"/bin/sh -c ", "/bin/bash -c ", "/busybox/sh -c ", "cmd /S /C "} {
		if r, ok := strings.CutPrefix(s, sh); ok {
			r = strings.TrimSpace(r)
			if n, ok := strings.CutPrefix(r, "#(nop)"); ok {
				return splitInstruction(n) // classic metadata step: "#(nop)  ADD …"
			}
			return "RUN", r
		}
	}
	word, rest, _ := strings.Cut(s, " ")
	return strings.ToUpper(word), strings.TrimSpace(rest)
}

// runCommand strips what BuildKit puts before a RUN's command: build args
// ("|2 A=1 B=2"), flags ("--mount=…") and the shell ("/bin/sh -c"), and
// unwraps the exec form (["/bin/sh","-c","curl …"]).
func runCommand(s string) string {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		words := execForm(s)
		if len(words) >= 3 && isShell(words[0]) && words[1] == "-c" {
			return strings.Join(words[2:], " ")
		}
		return shellQuoteJoin(words)
	}
	if strings.HasPrefix(s, "|") {
		words := strings.Fields(s)
		i := 1
		for i < len(words) && strings.Contains(words[i], "=") {
			i++
		}
		s = strings.Join(words[i:], " ")
	}
	for strings.HasPrefix(s, "--") {
		_, r, ok := strings.Cut(s, " ")
		if !ok {
			return ""
		}
		s = strings.TrimSpace(r)
	}
	for _, sh := range []string{"/bin/sh -c ", "/bin/bash -c ", "sh -c ", "bash -c "} {
		if r, ok := strings.CutPrefix(s, sh); ok {
			return r
		}
	}
	return s
}

// execForm parses a JSON-ish exec form leniently; history text is not
// always valid JSON.
func execForm(s string) []string {
	var words []string
	if err := json.Unmarshal([]byte(s), &words); err == nil {
		return words
	}
	s = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "["), "]")
	var out []string
	for _, w := range lex(strings.ReplaceAll(s, ",", " "), 0).words() {
		if w != "" {
			out = append(out, w)
		}
	}
	return out
}

func shellQuoteJoin(words []string) string {
	q := make([]string, len(words))
	for i, w := range words {
		q[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// add analyses an ADD instruction: every source that is a URL is a
// download; --chmod with an executable bit on a fetched file is reported.
func (a *stepAnalysis) add(args string) {
	words := lex(args, 0).words()
	var srcs []string
	execMode := false
	for _, w := range words {
		if m, ok := strings.CutPrefix(w, "--chmod="); ok {
			execMode = executableMode(m)
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
	for _, s := range srcs[:len(srcs)-1] {
		if host, ok := urlHost(s); ok {
			a.download("ADD", host, s)
			if execMode {
				a.report(StepFinding{Kind: StepChmodFetched, Host: host, URL: clip(s), Detail: fmt.Sprintf("ADD --chmod makes %s, fetched from %s, executable", dest, host)})
			}
		}
	}
}

// download reports a download from host unless it is trusted.
func (a *stepAnalysis) download(tool, host, rawURL string) {
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
	if a.trusted.Trusted(canon) {
		return
	}
	if ip {
		a.report(StepFinding{Kind: StepRawIPDownload, Host: canon, URL: clip(rawURL), Detail: fmt.Sprintf("downloads from raw IP %s with %s", canon, tool)})
		return
	}
	a.report(StepFinding{Kind: StepUntrustedDownload, Host: canon, URL: clip(rawURL), Detail: fmt.Sprintf("downloads from untrusted host %s with %s", canon, tool)})
}

func clip(s string) string {
	if len(s) <= maxURLBytes {
		return s
	}
	return s[:maxURLBytes]
}

// fetch is one download found in a command.
type fetch struct {
	tool, host, url string
	files           []string // where it was written, when known
}

// shell analyses a shell command line.
func (a *stepAnalysis) shell(src string, depth int) (fetched bool, decoded bool) {
	if depth > maxStepDepth || strings.TrimSpace(src) == "" {
		return false, false
	}
	l := lex(src, depth)
	// Substitutions run first; what they download counts for this step.
	subFetch := map[int]bool{}
	subDecode := map[int]bool{}
	for i, sub := range l.subs {
		f, d := a.shell(sub, depth+1)
		subFetch[i], subDecode[i] = f, d
		fetched = fetched || f
		decoded = decoded || d
	}
	var files []fetch
	for _, pipeline := range l.pipelines() {
		var upstreamFetch *fetch
		upstreamDecode := false
		for _, cmd := range pipeline {
			words := commandWords(cmd)
			if len(words) == 0 {
				continue
			}
			name := path.Base(words[0].text)
			// A shell or eval that runs a substitution's download or decoded
			// payload: sh -c "$(curl …)", bash <(curl …), eval "$(… | base64 -d)".
			if isShell(name) || name == "eval" || name == "source" || name == "." {
				for _, w := range words[1:] {
					for _, si := range w.subs {
						if subFetch[si] {
							a.report(StepFinding{Kind: StepPipeToShell, Detail: fmt.Sprintf("runs downloaded content with %s", name)})
						}
						if subDecode[si] {
							a.report(StepFinding{Kind: StepBase64Exec, Detail: fmt.Sprintf("runs a base64-decoded payload with %s", name)})
						}
					}
				}
				if upstreamFetch != nil {
					a.report(StepFinding{Kind: StepPipeToShell, Host: upstreamFetch.host, URL: clip(upstreamFetch.url),
						Detail: fmt.Sprintf("pipes a download from %s into %s", upstreamFetch.host, name)})
				}
				if upstreamDecode {
					a.report(StepFinding{Kind: StepBase64Exec, Detail: fmt.Sprintf("pipes a base64-decoded payload into %s", name)})
				}
			}
			if isBase64Decode(words) {
				upstreamDecode = true
				decoded = true
			}
			for _, f := range a.downloads(words) {
				fetched = true
				f.files = append(f.files, cmd.outputs...)
				files = append(files, f)
				upstreamFetch = &f
			}
			if name == "chmod" {
				a.chmod(words, files)
			}
		}
	}
	return fetched, decoded
}

// downloads reports and returns the downloads a simple command makes.
func (a *stepAnalysis) downloads(words []word) []fetch {
	name := path.Base(words[0].text)
	args := make([]string, 0, len(words)-1)
	for _, w := range words[1:] {
		args = append(args, w.text)
	}
	var out []fetch
	add := func(tool, host, u string, files ...string) {
		a.download(tool, host, u)
		out = append(out, fetch{tool: tool, host: host, url: u, files: files})
	}
	switch name {
	case "curl", "wget", "aria2c", "fetch", "axel":
		out = append(out, a.httpClient(name, args)...)
	case "git":
		if len(args) > 0 && (args[0] == "clone" || args[0] == "fetch" || args[0] == "pull" || args[0] == "remote" || args[0] == "submodule") {
			for _, s := range args[1:] {
				if host, ok := urlHost(s); ok {
					add("git", host, s)
				}
			}
		}
	case "pip", "pip3", "uv", "pipx", "easy_install":
		out = append(out, a.urlArgs(name, args)...)
	case "python", "python3", "python2":
		if len(args) > 2 && args[0] == "-m" && (args[1] == "pip" || args[1] == "pip3") {
			out = append(out, a.urlArgs("pip", args[2:])...)
		} else {
			for i, s := range args {
				if s == "-c" && i+1 < len(args) {
					out = append(out, a.embeddedURLs(name, args[i+1])...)
				}
			}
		}
	case "perl", "ruby", "node", "php":
		for i, s := range args {
			if (s == "-e" || s == "-r") && i+1 < len(args) {
				out = append(out, a.embeddedURLs(name, args[i+1])...)
			}
		}
	case "npm", "yarn", "pnpm", "apk", "gem", "cargo":
		out = append(out, a.urlArgs(name, args)...)
	case "go":
		if len(args) > 0 && (args[0] == "install" || args[0] == "get") {
			for _, s := range args[1:] {
				if strings.HasPrefix(s, "-") || !strings.Contains(s, "/") {
					continue
				}
				mod := strings.SplitN(strings.SplitN(s, "@", 2)[0], "/", 2)[0]
				if strings.Contains(mod, ".") && !strings.HasPrefix(s, ".") {
					add("go "+args[0], mod, s)
				}
			}
		}
	case "scp", "rsync", "sftp":
		for _, s := range args {
			if strings.HasPrefix(s, "-") || strings.Contains(s, "://") {
				if host, ok := urlHost(s); ok {
					add(name, host, s)
				}
				continue
			}
			if h, _, ok := strings.Cut(s, ":"); ok && h != "" && !strings.Contains(h, "/") {
				if i := strings.LastIndexByte(h, '@'); i >= 0 {
					h = h[i+1:]
				}
				add(name, h, s)
			}
		}
	case "nc", "ncat", "netcat", "socat":
		var pos []string
		for _, s := range args {
			if !strings.HasPrefix(s, "-") {
				pos = append(pos, s)
			}
		}
		if len(pos) >= 2 && allDigits(pos[1]) {
			add(name, pos[0], pos[0]+":"+pos[1])
		}
	}
	return out
}

// valueFlags are curl and wget options that take a value which is not the
// URL to fetch.
var valueFlags = map[string]bool{
	"-o": true, "--output": true, "-O": false, "-H": true, "--header": true, "-d": true, "--data": true,
	"-u": true, "--user": true, "-A": true, "--user-agent": true, "-e": true, "--referer": true, "-x": true,
	"--proxy": true, "-X": true, "--request": true, "-T": true, "--upload-file": true, "-w": true,
	"--write-out": true, "-m": true, "--max-time": true, "--retry": true, "--connect-timeout": true,
	"-b": true, "--cookie": true, "-c": true, "--cookie-jar": true, "-F": true, "--form": true,
	"--output-document": true, "-P": true, "--directory-prefix": true, "-t": true, "--tries": true,
	"--timeout": true, "-r": true, "--range": true, "--cacert": true, "--cert": true, "--key": true,
}

// httpClient handles curl, wget and friends: URLs with or without scheme,
// and where the download was written.
func (a *stepAnalysis) httpClient(tool string, args []string) []fetch {
	var out []fetch
	var outputs []string
	remoteName := tool == "wget" || tool == "aria2c" || tool == "fetch" || tool == "axel"
	var urls []string
	for i := 0; i < len(args); i++ {
		s := args[i]
		switch {
		case tool == "curl" && (s == "-o" || s == "--output") && i+1 < len(args):
			outputs = append(outputs, args[i+1])
			i++
			continue
		case tool == "curl" && strings.HasPrefix(s, "-o") && len(s) > 2 && !strings.HasPrefix(s, "--"):
			outputs = append(outputs, s[2:])
			continue
		case tool == "curl" && (s == "-O" || s == "--remote-name" || strings.HasPrefix(s, "-") && !strings.HasPrefix(s, "--") && strings.Contains(s, "O")):
			remoteName = true
			if strings.HasSuffix(s, "o") && i+1 < len(args) { // -fsSLo FILE
				outputs = append(outputs, args[i+1])
				i++
			}
			continue
		case tool == "curl" && strings.HasPrefix(s, "-") && !strings.HasPrefix(s, "--") && strings.HasSuffix(s, "o") && i+1 < len(args):
			outputs = append(outputs, args[i+1]) // -fsSLo FILE
			i++
			continue
		case tool != "curl" && (s == "-O" || s == "--output-document") && i+1 < len(args):
			outputs = append(outputs, args[i+1])
			remoteName = false
			i++
			continue
		case tool != "curl" && strings.HasPrefix(s, "--output-document="):
			outputs = append(outputs, strings.TrimPrefix(s, "--output-document="))
			remoteName = false
			continue
		case tool != "curl" && strings.HasPrefix(s, "-O") && len(s) > 2:
			outputs = append(outputs, s[2:])
			remoteName = false
			continue
		case strings.HasPrefix(s, "-"):
			if valueFlags[s] && i+1 < len(args) {
				i++
			}
			continue
		}
		if _, ok := urlHost(s); ok {
			urls = append(urls, s)
		} else if _, ok := barehost(s); ok {
			urls = append(urls, "http://"+s)
		}
	}
	for _, u := range urls {
		host, _ := urlHost(u)
		files := append([]string(nil), outputs...)
		if remoteName {
			if p, err := url.Parse(u); err == nil && path.Base(p.Path) != "/" && path.Base(p.Path) != "." {
				files = append(files, path.Base(p.Path))
			}
		}
		a.download(tool, host, u)
		out = append(out, fetch{tool: tool, host: host, url: u, files: files})
	}
	return out
}

// urlArgs reports every argument (or flag value) that is a URL, as pip's
// "--index-url URL" or npm's "install https://…" are.
func (a *stepAnalysis) urlArgs(tool string, args []string) []fetch {
	var out []fetch
	for _, s := range args {
		if _, v, ok := strings.Cut(s, "="); ok && strings.HasPrefix(s, "-") {
			s = v
		}
		if strings.HasPrefix(s, "-") {
			continue
		}
		if host, ok := urlHost(s); ok {
			a.download(tool, host, s)
			out = append(out, fetch{tool: tool, host: host, url: s})
		}
	}
	return out
}

// embeddedURLs finds URLs inside script text passed with -c or -e when
// the script fetches (urlopen, requests, LWP, fetch …).
func (a *stepAnalysis) embeddedURLs(tool, script string) []fetch {
	lower := strings.ToLower(script)
	if !strings.Contains(lower, "urlopen") && !strings.Contains(lower, "urlretrieve") && !strings.Contains(lower, "requests.") &&
		!strings.Contains(lower, "lwp") && !strings.Contains(lower, "fetch(") && !strings.Contains(lower, "http.get") &&
		!strings.Contains(lower, "open-uri") && !strings.Contains(lower, "file_get_contents") && !strings.Contains(lower, "getstore") {
		return nil
	}
	var out []fetch
	for _, field := range strings.FieldsFunc(script, func(r rune) bool { return strings.ContainsRune("'\"`() ,;", r) }) {
		if host, ok := urlHost(field); ok {
			a.download(tool, host, field)
			out = append(out, fetch{tool: tool, host: host, url: field})
		}
	}
	return out
}

// chmod reports files made executable that this step fetched.
func (a *stepAnalysis) chmod(words []word, fetched []fetch) {
	if len(fetched) == 0 {
		return
	}
	exec := false
	var targets []string
	for _, w := range words[1:] {
		s := w.text
		switch {
		case strings.HasPrefix(s, "-"):
		case !exec && executableMode(s):
			exec = true
		default:
			targets = append(targets, s)
		}
	}
	if !exec {
		return
	}
	for _, t := range targets {
		for _, f := range fetched {
			for _, file := range f.files {
				if file == t || path.Base(file) == path.Base(t) && path.Base(t) != "." {
					a.report(StepFinding{Kind: StepChmodFetched, Host: f.host, URL: clip(f.url),
						Detail: fmt.Sprintf("makes %s, fetched from %s, executable", t, f.host)})
				}
			}
		}
	}
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

func isShell(name string) bool {
	switch path.Base(name) {
	case "sh", "bash", "dash", "zsh", "ash", "ksh", "busybox", "python", "python3", "perl", "ruby", "node", "php":
		return true
	}
	return false
}

// isBase64Decode reports whether a command decodes base64: base64 -d,
// base64 --decode, openssl base64 -d, openssl enc -d -base64.
func isBase64Decode(words []word) bool {
	name := path.Base(words[0].text)
	args := make([]string, 0, len(words))
	for _, w := range words[1:] {
		args = append(args, w.text)
	}
	has := func(s ...string) bool {
		for _, a := range args {
			for _, x := range s {
				if a == x {
					return true
				}
			}
		}
		return false
	}
	switch name {
	case "base64", "b64decode":
		return has("-d", "--decode", "-D", "-di", "-id")
	case "openssl":
		return (has("base64") || has("-base64", "-a")) && has("-d")
	case "busybox":
		return has("base64") && has("-d")
	}
	return false
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

// maxMemoSteps bounds a policy's memo of analysed steps; when full it
// starts over.
const maxMemoSteps = 8192

// stepMemo remembers AnalyzeStep's answers for one policy's trusted
// sources. Image histories are immutable and the same steps come back
// with every admission of an image, so a cached review need not parse
// them again. It only memoizes a pure function: Decide stays pure.
type stepMemo struct {
	mu sync.Mutex
	m  map[string][]StepFinding
}

func (s *stepMemo) analyze(step string, trusted Sources) []StepFinding {
	if s == nil {
		return AnalyzeStep(step, trusted)
	}
	s.mu.Lock()
	r, ok := s.m[step]
	s.mu.Unlock()
	if ok {
		return r
	}
	r = AnalyzeStep(step, trusted)
	s.mu.Lock()
	if s.m == nil || len(s.m) >= maxMemoSteps {
		s.m = map[string][]StepFinding{}
	}
	s.m[step] = r
	s.mu.Unlock()
	return r
}
