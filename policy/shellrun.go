package policy

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"path"
	"strconv"
	"strings"
)

// The analysis walks a step's script as a shell would run it, without
// running anything: it expands variables with what it knows, follows
// text through pipes, here-documents and files the step writes, and
// judges each simple command.

// cmdResult is what a command hands to the next one in its pipeline.
type cmdResult struct {
	out     []string  // known standard output, one text per variant; nil when unknown
	fetch   *fetchRec // a download whose content goes to standard output
	fetched bool      // the command downloaded something
	decoded bool      // standard output is a decoded payload
	shell   bool      // a shell or interpreter: its output is a shell's
	net     string    // a network client: the host it talks to, "?" when unknown
	// argv is the command's arguments, for a checksum check downstream
	// (grep " file$" SUMS | sha256sum -c -).
	argv []string
}

// cmdCtx is what a simple command sees besides its arguments.
type cmdCtx struct {
	c        command
	depth    int
	note     string
	maybe    bool
	up       cmdResult
	hasUp    bool
	piped    bool
	stdin    []string // known standard input
	outFiles []string // files standard output is redirected to
	dup      bool     // a file descriptor is duplicated (0>&1, <&5)
	devNet   []string // /dev/tcp and /dev/udp redirect targets
	subFetch *fetchRec
	fetchSub bool // an argument is the output of a download
	decSub   bool // an argument is the output of a base64 decode
}

// run analyses a shell script at nesting depth. note, when set, says
// where the script comes from and is added to the details of findings.
func (a *stepAnalysis) run(src string, depth int, note string) cmdResult {
	var res cmdResult
	if depth > maxStepDepth || a.work >= maxStepWork || strings.TrimSpace(src) == "" {
		return res
	}
	a.work += len(src)
	l := lex(src)
	pls := l.pipelines()
	for _, p := range pls {
		maybe := a.cond > 0 || p.after == opAnd || p.after == opOr
		r := a.pipeline(l, p, depth, maybe, note)
		res.fetched = res.fetched || r.fetched
		res.decoded = res.decoded || r.decoded
		if r.fetch != nil {
			res.fetch = r.fetch
		}
		if len(pls) == 1 {
			res.out = r.out
		}
	}
	return res
}

func (a *stepAnalysis) pipeline(l *lexed, p pipeline, depth int, maybe bool, note string) cmdResult {
	var up cmdResult
	var shellAt, netAt = -1, -1
	netHost := ""
	fetched, decoded := false, false
	for i, c := range p.cmds {
		r := a.command(l, c, cmdCtx{depth: depth, note: note, maybe: maybe || len(p.cmds) > 1, up: up, hasUp: i > 0, piped: i < len(p.cmds)-1})
		fetched = fetched || r.fetched
		decoded = decoded || r.decoded
		if r.shell && shellAt < 0 {
			shellAt = i
		}
		if r.net != "" && netAt < 0 {
			netAt, netHost = i, r.net
		}
		up = r
	}
	// A shell whose output goes to a network client (… | sh -i | nc h p):
	// the mkfifo reverse shell.
	if shellAt >= 0 && netAt > shellAt {
		h := netHost
		if h == "?" {
			h = ""
		}
		a.report(StepFinding{Kind: StepReverseShell, Host: hostOf(h), URL: clip(h), Detail: a.detail(fmt.Sprintf("pipes a shell into a network connection to %s", orUnknown(h)), note)})
	}
	up.fetched, up.decoded = fetched, decoded || up.decoded
	return up
}

func orUnknown(h string) string {
	if h == "" {
		return "an unknown host"
	}
	return h
}

// hostOf returns the host of "host:port".
func hostOf(hp string) string {
	if a, err := netip.ParseAddrPort(hp); err == nil {
		return a.Addr().String()
	}
	if h, p, ok := strings.Cut(hp, ":"); ok && allDigits(p) {
		return h
	}
	return hp
}

func (a *stepAnalysis) detail(d, note string) string {
	if note == "" {
		return d
	}
	return d + " (" + note + ")"
}

// isKeyword reports whether w only structures the script: what follows
// it is the command.
func isKeyword(w string) bool {
	switch w {
	case "then", "do", "else", "elif", "!", "time", "{", "}", "in", "function":
		return true
	}
	return false
}

// command analyses one simple command.
func (a *stepAnalysis) command(l *lexed, c command, ctx cmdCtx) cmdResult {
	ctx.c = c
	// Command substitutions run first; what they do counts for this step.
	var subs [][]string
	if len(l.subs) > 0 {
		subs = make([][]string, len(l.subs))
	}
	visit := func(w word) {
		for _, p := range w.parts {
			if p.kind != partSub || p.sub >= len(l.subs) || subs[p.sub] != nil {
				continue
			}
			subs[p.sub] = []string{} // analysed, output unknown
			r := a.run(l.subs[p.sub], ctx.depth+1, ctx.note)
			if r.out != nil {
				subs[p.sub] = r.out
			}
			if r.fetched {
				ctx.fetchSub = true
				if r.fetch != nil {
					ctx.subFetch = r.fetch
				}
			}
			if r.decoded {
				ctx.decSub = true
			}
		}
	}
	for _, w := range c.words {
		visit(w)
	}
	for _, r := range c.redirs {
		visit(r.target)
	}
	if c.stdin != nil {
		visit(*c.stdin)
	}
	for i, s := range subs {
		if s != nil && len(s) == 0 {
			subs[i] = nil
		}
	}

	words := c.words
	for len(words) > 0 {
		w, ok := words[0].literal()
		if !ok {
			break
		}
		switch {
		case isKeyword(w):
			words = words[1:]
			continue
		case w == "if" || w == "while" || w == "until":
			a.cond++
			words = words[1:]
			continue
		case w == "fi" || w == "done" || w == "esac":
			if a.cond > 0 {
				a.cond--
			}
			words = words[1:]
			continue
		case w == "case":
			a.cond++
			return cmdResult{}
		case w == "for" || w == "select":
			a.cond++
			if len(words) >= 3 {
				if in, _ := words[2].literal(); in == "in" {
					name, _ := words[1].literal()
					var vals []string
					for _, w := range words[3:] {
						for _, v := range expandWord(l, w, a.lookup, subs, true) {
							vals = append(vals, v...)
						}
					}
					if validName(name) {
						a.assign(name, vals, true)
					}
				}
			}
			return cmdResult{}
		}
		break
	}
	// Leading assignments, and the arguments of export and friends.
	maybeAssign := ctx.maybe || a.cond > 0
	for len(words) > 0 {
		name, value, ok := assignmentWord(words[0])
		if !ok {
			break
		}
		a.assignWord(l, name, value, subs, maybeAssign || len(words) > 1)
		words = words[1:]
	}
	if len(words) > 0 {
		if w, ok := words[0].literal(); ok && (w == "export" || w == "local" || w == "readonly" || w == "declare" || w == "typeset") {
			for _, arg := range words[1:] {
				if name, value, ok := assignmentWord(arg); ok {
					a.assignWord(l, name, value, subs, maybeAssign)
				}
			}
			return cmdResult{}
		}
	}

	// Redirections and standard input.
	for _, r := range c.redirs {
		for _, v := range expandWord(l, r.target, a.lookup, subs, false) {
			t := joinFields(v)
			switch {
			case r.op == opDup:
				ctx.dup = true
			case strings.HasPrefix(t, "/dev/tcp/") || strings.HasPrefix(t, "/dev/udp/"):
				ctx.devNet = append(ctx.devNet, t)
			case r.op == opOut && t != "/dev/null" && !strings.HasPrefix(t, "/dev/std") && !strings.HasPrefix(t, "/proc/self/fd"):
				ctx.outFiles = append(ctx.outFiles, t)
			}
		}
	}
	switch {
	case c.hasHere:
		ctx.stdin = []string{c.hereBody}
	case c.stdin != nil:
		for _, v := range expandWord(l, *c.stdin, a.lookup, subs, false) {
			ctx.stdin = append(ctx.stdin, joinFields(v)+"\n")
		}
	case ctx.hasUp:
		ctx.stdin = ctx.up.out
	}

	if len(words) == 0 {
		// A group's redirection: { echo …; } > file writes what it echoed.
		for _, f := range ctx.outFiles {
			for _, t := range a.echoed {
				a.writeText(f, t, ctx.depth)
			}
		}
		// </dev/tcp/h/p alone opens a connection (a port check); with its
		// descriptors duplicated it is wiring one up.
		for _, t := range ctx.devNet {
			a.devNet(t, ctx.dup, ctx.note)
		}
		a.echoed = nil
		return cmdResult{}
	}

	// Expand the words; a command has as many variants as its most varied
	// word, each word's variants used in turn.
	expanded := make([][][]string, len(words))
	n := 1
	for i, w := range words {
		expanded[i] = expandWord(l, w, a.lookup, subs, true)
		if len(expanded[i]) == 0 {
			expanded[i] = [][]string{nil}
		}
		n = max(n, len(expanded[i]))
	}
	n = min(n, maxVariants)
	var res cmdResult
	var seen map[string]bool
	if n > 1 {
		seen = map[string]bool{}
	}
	for k := 0; k < n; k++ {
		var argv []string
		if n == 1 && len(expanded) == 1 {
			argv = expanded[0][0]
		} else {
			for _, e := range expanded {
				argv = append(argv, e[k%len(e)]...)
			}
		}
		if len(argv) == 0 {
			continue
		}
		if seen != nil {
			key := strings.Join(argv, "\x00")
			if seen[key] {
				continue
			}
			seen[key] = true
		}
		r := a.simple(argv, ctx)
		if ctx.piped && len(res.argv) < 256 {
			res.argv = append(res.argv, argv...)
		}
		res.out = append(res.out, r.out...)
		res.fetched = res.fetched || r.fetched
		res.decoded = res.decoded || r.decoded
		res.shell = res.shell || r.shell
		if r.fetch != nil {
			res.fetch = r.fetch
		}
		if r.net != "" {
			res.net = r.net
		}
		if a.work >= maxStepWork {
			break
		}
	}
	if len(res.out) > maxVariants {
		res.out = res.out[:maxVariants]
	}
	if res.out == nil || ctx.piped || len(ctx.outFiles) > 0 {
		a.echoed = nil
	}
	return res
}

// assignmentWord splits NAME=value (or NAME+=value) into the name and the
// value's parts.
func assignmentWord(w word) (string, []part, bool) {
	if len(w.parts) == 0 || w.parts[0].kind != partLit || w.parts[0].quoted {
		return "", nil, false
	}
	first := w.parts[0].text
	i := strings.IndexByte(first, '=')
	if i <= 0 {
		return "", nil, false
	}
	name := strings.TrimSuffix(first[:i], "+")
	if !validName(name) {
		return "", nil, false
	}
	value := append([]part{{kind: partLit, text: first[i+1:]}}, w.parts[1:]...)
	return name, value, true
}

func (a *stepAnalysis) assignWord(l *lexed, name string, value []part, subs [][]string, maybe bool) {
	var vals []string
	for _, v := range expandParts(l, value, a.lookup, subs, false, 0) {
		vals = append(vals, joinFields(v))
	}
	for _, v := range vals {
		a.scanText(v, "")
	}
	a.assign(name, vals, maybe)
}

// wrapper strips a command that runs another one (sudo, env, timeout …)
// and returns the command it runs, or false.
func (a *stepAnalysis) wrapper(argv []string, ctx cmdCtx) ([]string, bool) {
	name := path.Base(argv[0])
	rest := argv[1:]
	skipFlags := func(withValue string) {
		for len(rest) > 0 && strings.HasPrefix(rest[0], "-") && rest[0] != "-" {
			f := rest[0]
			rest = rest[1:]
			if f == "--" {
				return
			}
			if len(f) == 2 && strings.ContainsRune(withValue, rune(f[1])) && len(rest) > 0 {
				rest = rest[1:]
			}
		}
	}
	positional := func(n int) {
		for i := 0; i < n && len(rest) > 0; i++ {
			rest = rest[1:]
		}
	}
	switch name {
	case "sudo", "doas":
		skipFlags("ugCDhprtUT")
	case "env":
		for len(rest) > 0 {
			f := rest[0]
			switch {
			case f == "-S" && len(rest) > 1:
				rest = append(strings.Fields(rest[1]), rest[2:]...)
			case f == "-u" || f == "-C" || f == "--unset" || f == "--chdir":
				positional(2)
			case strings.HasPrefix(f, "-"):
				rest = rest[1:]
			case strings.Contains(f, "=") && validName(f[:strings.IndexByte(f, '=')]):
				k, v, _ := strings.Cut(f, "=")
				a.assign(k, []string{v}, true)
				a.scanText(v, ctx.note)
				rest = rest[1:]
			default:
				return rest, true
			}
		}
	case "nohup", "exec", "setsid", "catchsegv", "time", "builtin":
		skipFlags("")
	case "command":
		for _, f := range rest {
			if f == "-v" || f == "-V" {
				return nil, true // looks a command up, runs nothing
			}
		}
		skipFlags("")
	case "nice":
		skipFlags("n")
	case "ionice":
		skipFlags("cnp")
	case "timeout":
		skipFlags("sk")
		positional(1)
	case "stdbuf":
		skipFlags("ioe")
	case "gosu", "su-exec", "chpst", "s6-setuidgid":
		skipFlags("u")
		positional(1)
	case "chroot":
		skipFlags("")
		positional(1)
	case "taskset":
		skipFlags("")
		positional(1)
	case "tini", "dumb-init", "tini-static":
		skipFlags("pgel")
	case "busybox":
		if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
			return nil, false
		}
	case "xargs":
		skipFlags("IndaLPsE")
	default:
		return nil, false
	}
	return rest, true
}

// simple analyses one expanded simple command.
func (a *stepAnalysis) simple(argv []string, ctx cmdCtx) cmdResult {
	var res cmdResult
	for guard := 0; guard < 8 && len(argv) > 0; guard++ {
		a.execFetched(argv[0], true, ctx.note)
		name := path.Base(argv[0])
		switch name {
		case "su", "runuser":
			for i, f := range argv {
				if (f == "-c" || f == "--command") && i+1 < len(argv) {
					a.run(argv[i+1], ctx.depth+1, ctx.note)
				} else if s, ok := strings.CutPrefix(f, "--command="); ok {
					a.run(s, ctx.depth+1, ctx.note)
				}
			}
			return res
		case "find":
			for i := 1; i < len(argv); i++ {
				if argv[i] != "-exec" && argv[i] != "-execdir" && argv[i] != "-ok" && argv[i] != "-okdir" {
					continue
				}
				j := i + 1
				for j < len(argv) && argv[j] != ";" && argv[j] != "+" {
					j++
				}
				if j > i+1 && ctx.depth < maxStepDepth {
					sub := ctx
					sub.depth++
					a.simple(argv[i+1:j], sub)
				}
				i = j
			}
			return res
		}
		next, ok := a.wrapper(argv, ctx)
		if !ok {
			break
		}
		argv = next
	}
	if len(argv) == 0 {
		for _, t := range ctx.devNet {
			a.devNet(t, true, ctx.note) // exec 5<>/dev/tcp/h/p
		}
		return res
	}
	name := path.Base(argv[0])
	args := argv[1:]

	a.probeArgs(argv, ctx.note)
	a.minerArgs(name, args, ctx.note)
	interactive := false
	for _, f := range args {
		if f == "-i" || strings.HasPrefix(f, "-") && !strings.HasPrefix(f, "--") && strings.Contains(f, "i") && isShell(name) {
			interactive = true
		}
	}
	for _, t := range ctx.devNet {
		a.devNet(t, isShell(name) || interactive || ctx.dup || len(ctx.devNet) > 1, ctx.note)
	}
	for _, f := range args {
		if strings.HasPrefix(f, "/dev/tcp/") || strings.HasPrefix(f, "/dev/udp/") {
			a.devNet(f, false, ctx.note)
		}
	}

	switch {
	case isShell(name):
		res.shell = true
		a.shellCmd(name, args, ctx)
	case name == "eval":
		res.shell = true
		a.runsFetched(name, ctx)
		a.run(strings.Join(args, " "), ctx.depth+1, ctx.note)
	case name == "source" || name == ".":
		res.shell = true
		a.runsFetched(name, ctx)
		if len(args) > 0 {
			a.execFetched(args[0], false, ctx.note)
		}
	case isPowerShell(name):
		res.shell = true
		a.powershell(name, args, ctx)
	case isInterpreter(name):
		res.shell = true
		a.interpreter(name, args, ctx)
	case name == "echo" || name == "printf":
		text := echoText(name, args)
		res.out = []string{text}
		a.emit(text, ctx)
	case name == "cat" || name == "tee":
		var texts []string
		if name == "cat" {
			for _, f := range args {
				texts = append(texts, a.written[f]...)
			}
		}
		if len(texts) == 0 {
			texts = ctx.stdin
		}
		if name == "tee" {
			for _, f := range args {
				if !strings.HasPrefix(f, "-") {
					ctx.outFiles = append(ctx.outFiles, f)
				}
			}
			if ctx.up.fetch != nil {
				a.fetchedTo(ctx.up.fetch, ctx.outFiles)
				res.fetch = ctx.up.fetch
			}
		}
		res.out = texts
		for _, t := range texts {
			a.emit(t, ctx)
		}
	case isBase64Decode(name, args):
		res.decoded = true
		for _, t := range ctx.stdin {
			if d, ok := decodeBase64(t); ok {
				res.out = append(res.out, d)
			}
		}
		for _, t := range res.out {
			if len(ctx.outFiles) > 0 {
				a.emit(t, ctx)
			}
		}
	case name == "xxd" && hasArg(args, "-r"):
		for _, t := range ctx.stdin {
			if d, err := hex.DecodeString(strings.Join(strings.Fields(t), "")); err == nil {
				res.out = append(res.out, string(d))
			}
		}
		res.decoded = res.out != nil
	case name == "rev":
		for _, t := range ctx.stdin {
			res.out = append(res.out, reverseLines(t))
		}
	case name == "chmod":
		a.chmod(args, ctx.note)
	case name == "mv" || name == "cp" || name == "ln" || name == "install" || name == "rsync" && !hasRemote(args):
		a.copyFetched(name, args, ctx.note)
	case name == "cd":
		a.cd(args)
	case name == "nc" || name == "ncat" || name == "netcat" || name == "nc.traditional" || name == "nc.openbsd":
		res.net = a.netcat(name, args, ctx)
		if len(ctx.outFiles) > 0 || ctx.piped {
			if h, ok := netHostOnly(res.net); ok {
				r := a.download(name, h, res.net, ctx.outFiles...)
				res.fetched = true
				if ctx.piped {
					res.fetch = r
				}
			}
		}
	case name == "socat":
		res.net = a.socat(args, ctx.note)
	case name == "telnet":
		res.net = a.telnet(args, ctx.note)
	case name == "openssl" && len(args) > 0 && args[0] == "s_client":
		for i, f := range args {
			if f == "-connect" && i+1 < len(args) {
				res.net = args[i+1]
				a.connect(hostOf(args[i+1]), args[i+1], "openssl s_client", ctx.note)
			}
		}
	}
	if tool := verifyTool(name, args); tool != "" {
		a.verifyCmd(tool, args, ctx)
	}
	if name == "xargs" {
		return res
	}

	for _, r := range a.downloads(name, args, ctx) {
		res.fetched = true
		if ctx.piped {
			res.fetch = r
		}
	}
	if isShell(name) || isInterpreter(name) || name == "eval" || name == "source" || name == "." {
		res.out = nil
	}
	return res
}

func hasArg(args []string, a string) bool {
	for _, x := range args {
		if x == a {
			return true
		}
	}
	return false
}

func hasRemote(args []string) bool {
	for _, s := range args {
		if strings.Contains(s, "::") || strings.Contains(s, "://") {
			return true
		}
	}
	return false
}

func reverseLines(t string) string {
	lines := strings.Split(t, "\n")
	for i, ln := range lines {
		r := []rune(ln)
		for x, y := 0, len(r)-1; x < y; x, y = x+1, y-1 {
			r[x], r[y] = r[y], r[x]
		}
		lines[i] = string(r)
	}
	return strings.Join(lines, "\n")
}

// emit handles text a command writes to its standard output: into the
// files it is redirected to, or to the terminal (remembered for a group's
// redirection).
func (a *stepAnalysis) emit(text string, ctx cmdCtx) {
	if len(ctx.outFiles) > 0 {
		for _, f := range ctx.outFiles {
			a.writeText(f, text, ctx.depth)
		}
		return
	}
	if !ctx.piped && len(a.echoed) < maxVariants {
		a.echoed = append(a.echoed, text)
	}
}

// writeText records text written to file and analyses it as the script
// it may become: a reverse shell or a download written into a file is
// what the step left behind to run later.
func (a *stepAnalysis) writeText(file, text string, depth int) {
	if len(a.written[file]) < maxVariants {
		a.written[file] = append(a.written[file], text)
	}
	note := "in text written to " + file
	a.scanText(text, note)
	a.run(text, depth+1, note)
	// A crontab line runs its command on a schedule: judge the command.
	for _, ln := range strings.Split(text, "\n") {
		if cmd, user, ok := cronCommand(ln); ok {
			a.run(cmd, depth+1, note)
			if user != "" {
				a.run(user, depth+1, note)
			}
		}
	}
}

// cronCommand returns the command of a crontab line ("*/5 * * * * cmd",
// "@reboot cmd"), and the command without its first word for the system
// crontab's "min hour dom mon dow user cmd" form.
func cronCommand(ln string) (string, string, bool) {
	f := strings.Fields(ln)
	n := 5
	if len(f) > 0 && strings.HasPrefix(f[0], "@") {
		n = 1
	}
	if len(f) <= n {
		return "", "", false
	}
	for _, x := range f[:n] {
		if n == 5 && strings.Trim(x, "0123456789*/,-") != "" && !isCronName(x) {
			return "", "", false
		}
	}
	cmd := strings.Join(f[n:], " ")
	user := ""
	if len(f) > n+1 && validName(f[n]) {
		user = strings.Join(f[n+1:], " ")
	}
	return cmd, user, true
}

func isCronName(x string) bool {
	switch strings.ToLower(x) {
	case "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec", "mon", "tue", "wed", "thu", "fri", "sat", "sun":
		return true
	}
	return false
}

// echoText renders what echo or printf prints, approximately.
func echoText(name string, args []string) string {
	if name == "printf" {
		if len(args) == 0 {
			return ""
		}
		format, rest := args[0], args[1:]
		var b strings.Builder
		for i := 0; i < len(format); i++ {
			if format[i] == '%' && i+1 < len(format) {
				i++
				for i < len(format) && strings.IndexByte("-+ #0123456789.", format[i]) >= 0 {
					i++
				}
				if i < len(format) && format[i] == '%' {
					b.WriteByte('%')
					continue
				}
				if len(rest) > 0 {
					b.WriteString(unescape(rest[0]))
					rest = rest[1:]
				}
				continue
			}
			b.WriteByte(format[i])
		}
		for _, r := range rest {
			b.WriteString(r)
		}
		return unescape(b.String())
	}
	escapes := false
	for len(args) > 0 && len(args[0]) > 1 && args[0][0] == '-' && strings.Trim(args[0][1:], "neE") == "" {
		if strings.Contains(args[0], "e") {
			escapes = true
		}
		args = args[1:]
	}
	t := strings.Join(args, " ")
	if escapes {
		t = unescape(t)
	}
	return t + "\n"
}

// unescape interprets echo -e and printf backslash escapes.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	return ansiC(s)
}

func decodeBase64(t string) (string, bool) {
	t = strings.Join(strings.Fields(t), "")
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if d, err := enc.DecodeString(t); err == nil {
			return string(d), true
		}
	}
	return "", false
}

// isBase64Decode reports whether a command decodes base64: base64 -d,
// base64 --decode, openssl base64 -d, openssl enc -d -base64.
func isBase64Decode(name string, args []string) bool {
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
	case "base64", "b64decode", "base32":
		return has("-d", "--decode", "-D", "-di", "-id")
	case "openssl":
		return (has("base64") || has("-base64", "-a")) && has("-d")
	case "busybox":
		return has("base64") && has("-d")
	}
	return false
}

// runsFetched reports a shell or eval running downloaded or decoded
// content it was handed: sh -c "$(curl …)", curl … | sh, … | base64 -d | sh.
func (a *stepAnalysis) runsFetched(name string, ctx cmdCtx) {
	if ctx.fetchSub {
		a.report(StepFinding{Kind: StepPipeToShell, Detail: a.detail(fmt.Sprintf("runs downloaded content with %s", name), ctx.note)})
	}
	if ctx.decSub {
		a.report(StepFinding{Kind: StepBase64Exec, Detail: a.detail(fmt.Sprintf("runs a base64-decoded payload with %s", name), ctx.note)})
	}
	if ctx.hasUp && ctx.up.fetch != nil {
		f := ctx.up.fetch
		a.report(StepFinding{Kind: StepPipeToShell, Host: f.host, URL: clip(f.url), Detail: a.detail(fmt.Sprintf("pipes a download from %s into %s", f.host, name), ctx.note)})
	}
	if ctx.hasUp && ctx.up.decoded {
		a.report(StepFinding{Kind: StepBase64Exec, Detail: a.detail(fmt.Sprintf("pipes a base64-decoded payload into %s", name), ctx.note)})
	}
}

// shellCmd analyses a shell: its -c script, the script file it runs, or
// what it reads from its standard input.
func (a *stepAnalysis) shellCmd(name string, args []string, ctx cmdCtx) {
	a.runsFetched(name, ctx)
	for i := 0; i < len(args); i++ {
		f := args[i]
		switch {
		case isShellCFlag(f):
			if i+1 < len(args) {
				a.run(args[i+1], ctx.depth+1, ctx.note)
			}
			return
		case takesOption(f):
			i++
		case strings.HasPrefix(f, "-") || strings.HasPrefix(f, "+"):
		default:
			a.execFetched(f, false, ctx.note)
			return
		}
	}
	for _, t := range ctx.stdin {
		a.run(t, ctx.depth+1, ctx.note)
	}
}

// interpreter analyses python, perl, ruby, node, php: code passed with
// -c/-e/-r, a script file, or code on standard input.
func (a *stepAnalysis) interpreter(name string, args []string, ctx cmdCtx) {
	a.runsFetched(name, ctx)
	if len(args) > 2 && args[0] == "-m" && (args[1] == "pip" || args[1] == "pip3") {
		a.urlArgs("pip", args[2:])
		return
	}
	for i := 0; i < len(args); i++ {
		f := args[i]
		switch {
		case (f == "-c" || f == "-e" || f == "-r" || f == "-E" || f == "-R" || f == "--eval" || f == "-p") && i+1 < len(args):
			a.embeddedURLs(name, args[i+1])
			a.scanText(args[i+1], ctx.note)
			return
		case f == "-m" || f == "-W" || f == "-X" || f == "-M" || f == "-I" || f == "-d" && name == "php":
			i++
		case strings.HasPrefix(f, "-"):
		default:
			a.execFetched(f, false, ctx.note)
			return
		}
	}
	for _, t := range ctx.stdin {
		a.embeddedURLs(name, t)
		a.scanText(t, ctx.note)
	}
}

func isPowerShell(name string) bool {
	n := strings.ToLower(strings.TrimSuffix(strings.ToLower(name), ".exe"))
	return n == "pwsh" || n == "powershell"
}

// powershell analyses PowerShell's -Command and -EncodedCommand: a
// download cradle (IEX (New-Object Net.WebClient).DownloadString(…)) runs
// downloaded code.
func (a *stepAnalysis) powershell(name string, args []string, ctx cmdCtx) {
	a.runsFetched(name, ctx)
	var code []string
	for i := 0; i < len(args); i++ {
		f := strings.ToLower(args[i])
		switch {
		case (f == "-c" || f == "-command" || f == "/c") && i+1 < len(args):
			code = append(code, strings.Join(args[i+1:], " "))
			i = len(args)
		case (f == "-e" || f == "-enc" || f == "-encodedcommand") && i+1 < len(args):
			if b, err := base64.StdEncoding.DecodeString(args[i+1]); err == nil {
				code = append(code, utf16le(b))
				a.report(StepFinding{Kind: StepBase64Exec, Detail: a.detail(fmt.Sprintf("runs a base64-encoded command with %s", name), ctx.note)})
			}
			i++
		}
	}
	code = append(code, ctx.stdin...)
	for _, c := range code {
		before := len(a.fetches)
		a.embeddedURLs(name, c)
		lower := strings.ToLower(c)
		if (strings.Contains(lower, "iex") || strings.Contains(lower, "invoke-expression")) && len(a.fetches) > before {
			r := a.fetches[len(a.fetches)-1]
			a.report(StepFinding{Kind: StepPipeToShell, Host: r.host, URL: clip(r.url), Detail: a.detail(fmt.Sprintf("runs code downloaded from %s with %s", r.host, name), ctx.note)})
		}
		a.scanText(c, ctx.note)
	}
}

// utf16le decodes PowerShell's -EncodedCommand text.
func utf16le(b []byte) string {
	var sb strings.Builder
	for i := 0; i+1 < len(b); i += 2 {
		sb.WriteRune(rune(uint16(b[i]) | uint16(b[i+1])<<8))
	}
	return sb.String()
}

// execFetched reports running a file fetched from outside trustedSources.
func (a *stepAnalysis) execFetched(prog string, asProgram bool, note string) {
	if r := a.fetchedFile(prog, asProgram); r != nil {
		a.reportFetched(StepExecFetched, r, "runs %s, fetched from %s", prog, note)
	}
}

// chmod reports files fetched from outside trustedSources made executable.
func (a *stepAnalysis) chmod(args []string, note string) {
	exec := false
	var targets []string
	for _, s := range args {
		switch {
		case strings.HasPrefix(s, "-") && !executableMode(s):
		case !exec && (executableMode(s) || allDigits(s) || strings.ContainsAny(s, "+=")):
			exec = executableMode(s)
			if !exec {
				return
			}
		default:
			targets = append(targets, s)
		}
	}
	if !exec {
		return
	}
	for _, t := range targets {
		a.chmodFetched(t, note)
	}
}

func (a *stepAnalysis) chmodFetched(t, note string) {
	if r := a.fetchedFile(t, false); r != nil {
		a.reportFetched(StepChmodFetched, r, "makes %s, fetched from %s, executable", t, note)
	}
}

// reportFetched reports a finding of kind about file, fetched as r says:
// its detail is format with the file and where from ("host", or "host in
// step n" when an earlier step fetched it, with how that was verified).
func (a *stepAnalysis) reportFetched(kind StepKind, r *fetchRec, format, file, note string) {
	f := StepFinding{Kind: kind, Host: r.host, URL: clip(r.url)}
	from := r.host
	if r.step != a.index {
		f.CrossStep, f.FetchedIn, f.Verified = true, r.step, r.verified
		from = fmt.Sprintf("%s in step %d", r.host, r.step)
	}
	f.Detail = a.detail(fmt.Sprintf(format, file, from), note)
	if f.Verified != "" {
		f.Detail += ", verified with " + f.Verified
	}
	a.verifyOn = append(a.verifyOn, verifyRef{a.report(f), r})
}

// copyFetched follows a fetched file through mv, cp, ln and install;
// install makes its destination executable unless -m says otherwise.
func (a *stepAnalysis) copyFetched(name string, args []string, note string) {
	var pos []string
	dir := ""
	mode := "755"
	for i := 0; i < len(args); i++ {
		s := args[i]
		switch {
		case s == "-t" && i+1 < len(args):
			dir = args[i+1]
			i++
		case strings.HasPrefix(s, "--target-directory="):
			dir = strings.TrimPrefix(s, "--target-directory=")
		case (s == "-m" || s == "--mode") && i+1 < len(args) && name == "install":
			mode = args[i+1]
			i++
		case strings.HasPrefix(s, "--mode=") && name == "install":
			mode = strings.TrimPrefix(s, "--mode=")
		case (s == "-o" || s == "-g" || s == "-S") && name == "install" && i+1 < len(args):
			i++
		case strings.HasPrefix(s, "-"):
		default:
			pos = append(pos, s)
		}
	}
	if dir == "" {
		if len(pos) < 2 {
			return
		}
		dir, pos = pos[len(pos)-1], pos[:len(pos)-1]
		for _, src := range pos {
			if r := a.fetchedFile(src, false); r != nil {
				a.fetchedTo(r, []string{dir, path.Join(dir, path.Base(src))})
				if name == "install" && executableMode(mode) {
					a.chmodFetched(dir, note)
				}
			}
		}
		return
	}
	for _, src := range pos {
		if r := a.fetchedFile(src, false); r != nil {
			dst := path.Join(dir, path.Base(src))
			a.fetchedTo(r, []string{dst})
			if name == "install" && executableMode(mode) {
				a.chmodFetched(dst, note)
			}
		}
	}
}

// fetchedTo records that a download also lives at files.
func (a *stepAnalysis) fetchedTo(r *fetchRec, files []string) {
	for _, f := range files {
		if len(r.files) >= maxVariants*2 {
			return
		}
		abs, ok := a.resolve(f)
		if !ok {
			abs = f
		}
		r.files = append(r.files, abs)
		if r.step != a.index && !r.trusted && len(a.img.fetched) < maxFetchedKept {
			if ok {
				a.img.fetched[abs] = r
			}
			b := path.Base(abs)
			a.img.byBase[b] = append(a.img.byBase[b], r)
		}
	}
}

// cd follows the working directory; an unknown target makes it unknown.
func (a *stepAnalysis) cd(args []string) {
	var dir string
	for _, s := range args {
		if !strings.HasPrefix(s, "-") || s == "-" {
			dir = s
			break
		}
	}
	switch {
	case dir == "" || dir == "-" || strings.Contains(dir, "$") || strings.HasPrefix(dir, "~"):
		a.cwd = ""
	case path.IsAbs(dir):
		a.cwd = path.Clean(dir)
	case a.cwd != "":
		a.cwd = path.Join(a.cwd, dir)
	}
}

// verifyTool names the check a command makes of a file it names, or "".
func verifyTool(name string, args []string) string {
	switch name {
	case "sha256sum", "sha512sum", "sha384sum", "sha224sum", "sha1sum", "md5sum", "b2sum", "shasum", "cksum":
		for _, s := range args {
			if s == "-c" || s == "--check" || strings.HasPrefix(s, "--check=") || strings.HasPrefix(s, "-") && !strings.HasPrefix(s, "--") && strings.Contains(s, "c") {
				return name
			}
		}
	case "gpg", "gpg2":
		for _, s := range args {
			if s == "--verify" || s == "--decrypt" || s == "-d" {
				return name + " " + s
			}
		}
	case "gpgv", "gpgv2", "sqv":
		return name
	case "sq":
		if hasArg(args, "verify") {
			return "sq verify"
		}
	case "cosign":
		if len(args) > 0 && strings.HasPrefix(args[0], "verify") {
			return "cosign " + args[0]
		}
	case "minisign", "signify":
		if hasArg(args, "-V") || hasArg(args, "-C") || hasArg(args, "-Vm") {
			return name
		}
	case "openssl":
		if len(args) > 0 && (args[0] == "dgst" || args[0] == "sha256" || args[0] == "sha512" || args[0] == "sha1" || args[0] == "sha384") {
			return "openssl " + args[0]
		}
	case "rpm":
		if hasArg(args, "-K") || hasArg(args, "--checksig") {
			return "rpm --checksig"
		}
	}
	return ""
}

// verifyCmd records what a checksum or signature check names: its
// arguments, its standard input, and the text of files it reads that the
// step wrote.
func (a *stepAnalysis) verifyCmd(tool string, args []string, ctx cmdCtx) {
	names := map[string]bool{}
	add := func(t string) {
		t = strings.Trim(t, "\"'*$\\(),")
		if t == "" || len(names) > 256 {
			return
		}
		names[t] = true
		names[path.Base(t)] = true
	}
	for _, s := range args {
		if strings.HasPrefix(s, "-") {
			continue
		}
		add(s)
		for _, t := range a.written[s] {
			for _, f := range strings.Fields(t) {
				add(f)
			}
		}
	}
	for _, t := range ctx.stdin {
		for _, f := range strings.Fields(t) {
			add(f)
		}
	}
	// Text piped in from grep or cat of a checksum list: the file names
	// the commands upstream were given.
	if ctx.hasUp {
		for _, s := range ctx.up.argv {
			for _, f := range strings.Fields(s) {
				add(f)
			}
		}
	}
	a.checks = append(a.checks, check{tool: tool, names: names})
}

// netcat analyses nc and friends: -e/-c runs a program on the connection.
func (a *stepAnalysis) netcat(name string, args []string, ctx cmdCtx) string {
	var pos []string
	exec, listen := "", false
	for i := 0; i < len(args); i++ {
		s := args[i]
		switch {
		case s == "-e" || s == "-c" || s == "--exec" || s == "--sh-exec" || s == "--lua-exec":
			if i+1 < len(args) {
				exec = args[i+1]
				i++
			}
		case strings.HasPrefix(s, "--exec=") || strings.HasPrefix(s, "--sh-exec="):
			_, exec, _ = strings.Cut(s, "=")
		case s == "-l" || s == "--listen" || strings.HasPrefix(s, "-") && !strings.HasPrefix(s, "--") && strings.Contains(s, "l") && len(s) < 6:
			listen = true
			if strings.HasSuffix(s, "e") && i+1 < len(args) {
				exec = args[i+1]
				i++
			}
		case len(s) == 2 && strings.Contains("pswqiIxXOPTVWo", s[1:]) && i+1 < len(args):
			i++
		case strings.HasPrefix(s, "-"):
		default:
			pos = append(pos, s)
		}
	}
	hp := "?"
	if len(pos) >= 2 {
		hp = pos[0] + ":" + pos[1]
	} else if len(pos) == 1 {
		hp = pos[0]
	}
	switch {
	case exec != "" && listen:
		a.report(StepFinding{Kind: StepReverseShell, Detail: a.detail(fmt.Sprintf("serves %s to whoever connects, with %s", exec, name), ctx.note)})
	case exec != "":
		a.report(StepFinding{Kind: StepReverseShell, Host: hostOfOrEmpty(hp), URL: clip(hostPortOrEmpty(hp)), Detail: a.detail(fmt.Sprintf("hands %s to a connection to %s with %s", exec, orUnknown(hostPortOrEmpty(hp)), name), ctx.note)})
	}
	if !listen && len(pos) >= 2 && len(ctx.outFiles) == 0 && !ctx.piped {
		a.connect(pos[0], hp, name, ctx.note)
	}
	return hp
}

func hostOfOrEmpty(hp string) string {
	if hp == "?" {
		return ""
	}
	return hostOf(hp)
}

func hostPortOrEmpty(hp string) string {
	if hp == "?" {
		return ""
	}
	return hp
}

// netHostOnly returns the host of "host:port" when it is usable.
func netHostOnly(hp string) (string, bool) {
	if hp == "" || hp == "?" {
		return "", false
	}
	return hostOf(hp), true
}

// socat analyses socat's addresses: a network address joined to exec: or
// system: is a shell served over the network.
func (a *stepAnalysis) socat(args []string, note string) string {
	var netAddr string
	execs := false
	for _, s := range args {
		typ, rest, ok := strings.Cut(s, ":")
		if !ok {
			continue
		}
		switch strings.ToLower(typ) {
		case "exec", "system":
			execs = true
		case "tcp", "tcp4", "tcp6", "tcp-connect", "tcp4-connect", "tcp6-connect", "openssl", "openssl-connect", "ssl", "udp", "udp4", "udp6", "udp-connect", "sctp-connect":
			hp, _, _ := strings.Cut(rest, ",")
			netAddr = hp
		}
	}
	if netAddr == "" {
		return ""
	}
	if execs {
		a.report(StepFinding{Kind: StepReverseShell, Host: hostOf(netAddr), URL: clip(netAddr), Detail: a.detail(fmt.Sprintf("serves a program to a connection to %s with socat", netAddr), note)})
	}
	a.connect(hostOf(netAddr), netAddr, "socat", note)
	return netAddr
}

func (a *stepAnalysis) telnet(args []string, note string) string {
	var pos []string
	for _, s := range args {
		if !strings.HasPrefix(s, "-") {
			pos = append(pos, s)
		}
	}
	if len(pos) == 0 {
		return ""
	}
	hp := pos[0]
	if len(pos) > 1 {
		hp += ":" + pos[1]
	}
	a.connect(pos[0], hp, "telnet", note)
	return hp
}

// devNet handles a /dev/tcp/host/port or /dev/udp/host/port path; shell
// says it is wired to a shell's input and output.
func (a *stepAnalysis) devNet(p string, shell bool, note string) {
	rest := strings.TrimPrefix(strings.TrimPrefix(p, "/dev/tcp/"), "/dev/udp/")
	host, port, _ := strings.Cut(rest, "/")
	if i := strings.IndexAny(port, "/ \t"); i >= 0 {
		port = port[:i]
	}
	hp := host
	if port != "" {
		hp = host + ":" + port
	}
	if shell {
		a.report(StepFinding{Kind: StepReverseShell, Host: printable(host), URL: clip(printable(hp)), Detail: a.detail(fmt.Sprintf("wires a shell to %s", printable(p)), note)})
	}
	a.connect(host, hp, "/dev/tcp", note)
}

// connect reports a connection to host unless it is trusted.
func (a *stepAnalysis) connect(host, hostPort, via, note string) {
	canon, _, ok := canonicalHost(host)
	if !ok {
		if host == "" || strings.ContainsAny(host, "$") {
			return // unknown at build time; a reverse shell is reported on its own
		}
		canon = printable(host)
	}
	if ForbiddenHost(canon) {
		a.report(StepFinding{Kind: StepCloudProbe, Host: canon, URL: clip(printable(hostPort)), Detail: a.detail(fmt.Sprintf("connects to the cloud metadata service at %s with %s", canon, via), note)})
		return
	}
	if ok && (a.trusted.Trusted(canon) || isLocal(canon)) {
		return
	}
	a.report(StepFinding{Kind: StepConnection, Host: canon, URL: clip(printable(hostPort)), Detail: a.detail(fmt.Sprintf("connects to %s with %s", printable(hostPort), via), note)})
}

func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == ' ' {
			return '?'
		}
		return r
	}, s)
}

// probeArgs reports a step reading a Kubernetes service-account token.
func (a *stepAnalysis) probeArgs(argv []string, note string) {
	for _, s := range argv {
		if strings.Contains(s, "/run/secrets/kubernetes.io/") || strings.HasSuffix(s, "/run/secrets/kubernetes.io") || strings.Contains(s, "/run/secrets/eks.amazonaws.com") {
			a.report(StepFinding{Kind: StepCloudProbe, URL: clip(s), Detail: a.detail(fmt.Sprintf("reads the build host's service-account credentials at %s", clip(s)), note)})
		}
	}
}

// minerNames are programs that only mine cryptocurrency.
var minerNames = []string{"xmrig", "xmr-stak", "cpuminer", "ccminer", "cgminer", "bfgminer", "ethminer", "t-rex", "lolminer",
	"nbminer", "phoenixminer", "nanominer", "srbminer", "gminer", "teamredminer", "kawpowminer", "minerd", "tt-miner",
	"nheqminer", "rqiner", "hellminer", "bzminer", "wildrig", "cryptodredge", "z-enemy", "miniz", "xmr-node-proxy", "xmrig-proxy"}

func isMinerName(n string) bool {
	for _, m := range minerNames {
		if len(n) < len(m) || !strings.EqualFold(n[:len(m)], m) {
			continue
		}
		if len(n) == len(m) || strings.IndexByte("-._", n[len(m)]) >= 0 {
			return true
		}
	}
	return false
}

// notMiners are common programs whose -o or --url takes something that
// could look like host:port without being a pool.
var notMiners = map[string]bool{"ssh": true, "scp": true, "sftp": true, "sshfs": true, "mount": true, "curl": true, "wget": true,
	"apt": true, "apt-get": true, "dpkg": true, "gcc": true, "cc": true, "ld": true, "go": true, "openssl": true, "git": true,
	"sort": true, "tar": true, "docker": true, "kubectl": true, "helm": true}

// minerArgs reports a known miner run, a mining-pool URL, or a pool given
// as -o host:port to a program that is not known to mean anything else by it.
func (a *stepAnalysis) minerArgs(name string, args []string, note string) {
	known := isMinerName(name)
	if f := strings.Fields(name); len(f) > 0 {
		known = known || isMinerName(f[0])
	}
	found := false
	// A program not known as a miner counts as one when it is given a
	// pool and the options a miner also takes (a wallet, a password, an
	// algorithm …): -o host:port alone is also a listen address or an
	// output of some servers.
	minerish := known
	for _, s := range args {
		switch strings.SplitN(s, "=", 2)[0] {
		case "-u", "--user", "-user", "-p", "--pass", "-k", "--keepalive", "-a", "--algo", "--coin", "--tls", "--rig-id", "-w", "--wallet", "--cpu-priority", "--max-cpu-usage":
			minerish = true
		}
	}
	for i, s := range args {
		if stratumHost(s) != "" {
			a.miner(s, fmt.Sprintf("passes the mining pool %s to %s", clip(s), name), note)
			found = true
			continue
		}
		if s == "--donate-level" || strings.HasPrefix(s, "--donate-level=") {
			a.report(StepFinding{Kind: StepCryptoMiner, Detail: a.detail(fmt.Sprintf("runs %s with --donate-level, an option only XMRig-family miners take", name), note)})
			found = true
			continue
		}
		v := ""
		switch {
		case (s == "-o" || s == "--url" || s == "-url" || s == "--pool" || s == "-P" || s == "--server") && i+1 < len(args):
			v = args[i+1]
		case strings.HasPrefix(s, "--url=") || strings.HasPrefix(s, "-o=") || strings.HasPrefix(s, "--pool="):
			_, v, _ = strings.Cut(s, "=")
		}
		if v == "" || !minerish || notMiners[name] && !known {
			continue
		}
		if h, ok := poolHostPort(v); ok {
			a.report(StepFinding{Kind: StepCryptoMiner, Host: h, URL: clip(v), Detail: a.detail(fmt.Sprintf("points %s at the mining pool %s", name, clip(v)), note)})
			found = true
		}
	}
	if known && !found {
		a.report(StepFinding{Kind: StepCryptoMiner, Detail: a.detail(fmt.Sprintf("runs the crypto miner %s", name), note)})
	}
}

func (a *stepAnalysis) miner(u, detail, note string) {
	h := stratumHost(u)
	a.report(StepFinding{Kind: StepCryptoMiner, Host: h, URL: clip(u), Detail: a.detail(detail, note)})
}

// stratumHost returns the host of a stratum URL inside s, or "".
func stratumHost(s string) string {
	lower := strings.ToLower(s)
	i := strings.Index(lower, "stratum")
	if i < 0 {
		return ""
	}
	rest := lower[i+len("stratum"):]
	j := strings.Index(rest, "://")
	if j < 0 || j > 12 || strings.Trim(rest[:j], "0123456789+tcpsludpl") != "" {
		return ""
	}
	hp := rest[j+3:]
	if k := strings.IndexAny(hp, "/ \t\"'"); k >= 0 {
		hp = hp[:k]
	}
	if at := strings.LastIndexByte(hp, '@'); at >= 0 {
		hp = hp[at+1:]
	}
	h := hostOf(hp)
	if h == "" {
		return "?"
	}
	return printable(h)
}

// poolHostPort recognises host:port with a host that is an IP address or
// a dotted name, and a port number.
func poolHostPort(v string) (string, bool) {
	v = strings.Trim(v, `"'`)
	i := strings.LastIndexByte(v, ':')
	if i <= 0 || strings.ContainsAny(v, "/=,") {
		return "", false
	}
	port, err := strconv.Atoi(v[i+1:])
	if err != nil || port <= 0 || port > 65535 {
		return "", false
	}
	h := strings.Trim(v[:i], "[]")
	canon, ip, ok := canonicalHost(h)
	if !ok || !ip && (!strings.Contains(canon, ".") || looksNumeric(canon)) || isLocal(canon) {
		return "", false
	}
	return canon, true
}

// isLocal reports whether a canonical host is this machine: loopback, the
// unspecified address, localhost. A build step that talks to it talks to
// something the build itself started (a health check, a port it waits for).
func isLocal(h string) bool {
	if a, err := netip.ParseAddr(h); err == nil {
		return a.IsLoopback() || a.IsUnspecified()
	}
	return h == "localhost" || strings.HasSuffix(h, ".localhost")
}

// scanText looks in text of any language for connections: /dev/tcp
// paths, mining-pool URLs, and socket code.
func (a *stepAnalysis) scanText(text, note string) {
	if len(text) > maxTextBytes {
		text = text[:maxTextBytes]
	}
	lower := strings.ToLower(text)
	shellish := strings.Contains(lower, ">&") || strings.Contains(lower, "<&") || strings.Contains(lower, " -i") || strings.Contains(lower, "exec ")
	for off := 0; off < len(text); {
		i := strings.Index(text[off:], "/dev/")
		if i < 0 {
			break
		}
		p := text[off+i:]
		if strings.HasPrefix(p, "/dev/tcp/") || strings.HasPrefix(p, "/dev/udp/") {
			end := strings.IndexAny(p, " \t\n\"';|&<>)")
			if end < 0 {
				end = len(p)
			}
			a.devNet(p[:end], shellish, note)
		}
		off += i + 5
	}
	for off := 0; off < len(lower); {
		i := strings.Index(lower[off:], "stratum")
		if i < 0 {
			break
		}
		p := text[off+i:]
		end := strings.IndexAny(p, " \t\n\"';|&<>)")
		if end < 0 {
			end = len(p)
		}
		if stratumHost(p[:end]) != "" {
			a.miner(p[:end], fmt.Sprintf("names the mining pool %s", clip(p[:end])), note)
		}
		off += i + 7
	}
	a.socketCode(text, lower, note)
}

// socketMarkers are what socket code looks like in the usual languages.
var socketMarkers = []string{"socket.socket", "socket(", "fsockopen", "tcpsocket", "io::socket", "net.connect", "net.socket",
	"createconnection", "socket.new", "new socket(", "socket.create_connection", "peeraddr"}

var shellMarkers = []string{"dup2", "pty.spawn", "subprocess", "/bin/sh", "/bin/bash", "exec(", "spawn(", "popen", "system(",
	"cmd.exe", "proc_open", "shell_exec", "sh -i", "bash -i"}

// socketCode finds the address an interpreter's socket code connects to:
// a quoted host followed by a port, ("198.51.100.7",4444) or "h:4444".
func (a *stepAnalysis) socketCode(text, lower, note string) {
	found := false
	for _, m := range socketMarkers {
		if strings.Contains(lower, m) {
			found = true
			break
		}
	}
	if !found {
		return
	}
	shell := false
	for _, m := range shellMarkers {
		if strings.Contains(lower, m) {
			shell = true
			break
		}
	}
	defer func() {
		// Socket code wired to a shell, its address not in the text (a
		// variable, say): still a reverse shell.
		if shell && strings.Contains(lower, "connect") && !a.hasKind(StepReverseShell) {
			a.report(StepFinding{Kind: StepReverseShell, Detail: a.detail("runs a shell over a socket", note)})
		}
	}()
	reported := 0
	for i := 0; i < len(text) && reported < 8; i++ {
		q := text[i]
		if q != '"' && q != '\'' {
			continue
		}
		end := strings.IndexByte(text[i+1:], q)
		if end < 0 || end > 255 {
			continue
		}
		lit := text[i+1 : i+1+end]
		after := text[i+2+end:]
		i += end + 1
		host, port := lit, ""
		if h, p, ok := strings.Cut(lit, ":"); ok && allDigits(p) {
			host, port = h, p
		} else {
			t := strings.TrimLeft(after, " \t")
			if !strings.HasPrefix(t, ",") {
				continue
			}
			t = strings.TrimLeft(t[1:], " \t")
			j := 0
			for j < len(t) && t[j] >= '0' && t[j] <= '9' {
				j++
			}
			if j == 0 {
				continue
			}
			port = t[:j]
		}
		canon, ip, ok := canonicalHost(host)
		if !ok || !ip && (!strings.Contains(canon, ".") || fileLike(canon)) {
			continue
		}
		hp := canon + ":" + port
		if shell {
			a.report(StepFinding{Kind: StepReverseShell, Host: canon, URL: clip(hp), Detail: a.detail(fmt.Sprintf("runs a shell over a socket to %s", hp), note)})
		}
		a.connect(canon, hp, "socket code", note)
		reported++
	}
}

func (a *stepAnalysis) hasKind(k StepKind) bool {
	for _, f := range a.out {
		if f.Kind == k {
			return true
		}
	}
	return false
}

// fileLike reports whether a dotted name is more likely a file name.
func fileLike(n string) bool {
	ext := n[strings.LastIndexByte(n, '.')+1:]
	switch ext {
	case "py", "sh", "so", "txt", "json", "conf", "log", "pid", "sock", "js", "rb", "php", "html", "xml", "yaml", "yml", "ini", "cfg", "tar", "gz", "zip", "pem", "key", "crt":
		return true
	}
	return false
}

// downloads reports and records the downloads a simple command makes.
func (a *stepAnalysis) downloads(name string, args []string, ctx cmdCtx) []*fetchRec {
	switch name {
	case "curl", "wget", "wget2", "aria2c", "fetch", "axel", "lwp-download":
		return a.httpClient(name, args, ctx)
	case "git":
		return a.git(args)
	case "hg", "svn":
		var out []*fetchRec
		for _, s := range args {
			if host, ok := urlHost(s); ok {
				out = append(out, a.download(name, host, s))
			}
		}
		return out
	case "pip", "pip3", "uv", "pipx", "easy_install", "npm", "npx", "yarn", "pnpm", "apk", "gem", "cargo", "composer", "conda", "mamba":
		return a.urlArgs(name, args)
	case "go":
		var out []*fetchRec
		if len(args) > 0 && (args[0] == "install" || args[0] == "get" || args[0] == "run") {
			for _, s := range args[1:] {
				if strings.HasPrefix(s, "-") || !strings.Contains(s, "/") || strings.HasPrefix(s, ".") {
					continue
				}
				mod := strings.SplitN(strings.SplitN(s, "@", 2)[0], "/", 2)[0]
				if strings.Contains(mod, ".") {
					out = append(out, a.download("go "+args[0], mod, s))
				}
			}
		}
		return out
	case "scp", "rsync", "sftp":
		var out []*fetchRec
		for _, s := range args {
			if strings.HasPrefix(s, "-") || strings.Contains(s, "://") {
				if host, ok := urlHost(s); ok {
					out = append(out, a.download(name, host, s))
				}
				continue
			}
			if h, _, ok := strings.Cut(s, ":"); ok && h != "" && !strings.Contains(h, "/") {
				if i := strings.LastIndexByte(h, '@'); i >= 0 {
					h = h[i+1:]
				}
				out = append(out, a.download(name, h, s))
			}
		}
		return out
	}
	return nil
}

// git reports clone, fetch and pull sources; a clone's directory counts
// as fetched.
func (a *stepAnalysis) git(args []string) []*fetchRec {
	for len(args) > 1 && (args[0] == "-C" || args[0] == "-c") {
		args = args[2:]
	}
	if len(args) == 0 {
		return nil
	}
	switch args[0] {
	case "clone", "fetch", "pull", "remote", "submodule", "ls-remote", "archive":
	default:
		return nil
	}
	var out []*fetchRec
	var pos []string
	for i := 1; i < len(args); i++ {
		s := args[i]
		switch {
		case s == "-b" || s == "--branch" || s == "--depth" || s == "-o" || s == "--origin" || s == "-c" || s == "--config" || s == "--reference":
			i++
		case strings.HasPrefix(s, "-"):
		default:
			pos = append(pos, s)
		}
	}
	for j, s := range pos {
		host, ok := urlHost(s)
		if !ok {
			continue
		}
		r := a.download("git", host, s)
		if args[0] == "clone" {
			dir := strings.TrimSuffix(path.Base(urlPath(s)), ".git")
			if j+1 < len(pos) {
				dir = pos[j+1]
			}
			if abs, ok := a.resolve(dir); ok {
				dir = abs
			}
			r.dirs = append(r.dirs, dir)
		}
		out = append(out, r)
	}
	return out
}

// curlValueFlags are curl and wget options that take a value which is not
// the URL to fetch.
var curlValueFlags = map[string]bool{
	"-H": true, "--header": true, "-d": true, "--data": true, "--data-raw": true, "--data-binary": true, "--data-urlencode": true,
	"-u": true, "--user": true, "-A": true, "--user-agent": true, "-e": true, "--referer": true, "-x": true,
	"--proxy": true, "-X": true, "--request": true, "-T": true, "--upload-file": true, "-w": true,
	"--write-out": true, "-m": true, "--max-time": true, "--retry": true, "--connect-timeout": true,
	"-b": true, "--cookie": true, "-c": true, "--cookie-jar": true, "-F": true, "--form": true,
	"-t": true, "--tries": true, "--timeout": true, "-r": true, "--range": true, "--cacert": true, "--cert": true, "--key": true,
	"--post-data": true, "--post-file": true, "--body-data": true, "--method": true, "-U": true, "--resolve": true,
	"--retry-delay": true, "--retry-max-time": true, "-K": true, "--config": true, "-E": true, "--ciphers": true,
}

// httpClient handles curl, wget and friends: URLs with or without scheme,
// and where each download was written.
func (a *stepAnalysis) httpClient(tool string, args []string, ctx cmdCtx) []*fetchRec {
	var outputs []string
	remoteName := tool != "curl"
	toStdout := tool == "curl"
	dir := ""
	var urls []string
	for i := 0; i < len(args); i++ {
		s := args[i]
		switch {
		case tool == "curl" && (s == "-o" || s == "--output") && i+1 < len(args):
			outputs = append(outputs, args[i+1])
			toStdout = args[i+1] == "-"
			i++
			continue
		case tool == "curl" && s == "--output-dir" && i+1 < len(args):
			dir = args[i+1]
			i++
			continue
		case tool == "curl" && (s == "-O" || s == "--remote-name" || s == "--remote-name-all"):
			remoteName, toStdout = true, false
			continue
		case tool == "curl" && len(s) > 1 && s[0] == '-' && s[1] != '-':
			// Combined short options: -fsSLo FILE, -fsSLO, -ofile.
			flags := s[1:]
			if k := strings.IndexByte(flags, 'o'); k >= 0 {
				if k == len(flags)-1 && i+1 < len(args) {
					outputs = append(outputs, args[i+1])
					i++
				} else if k < len(flags)-1 {
					outputs = append(outputs, flags[k+1:])
				}
				toStdout = len(outputs) > 0 && outputs[len(outputs)-1] == "-"
				flags = flags[:k]
			}
			if strings.Contains(flags, "O") {
				remoteName, toStdout = true, false
			}
			if last := flags[len(flags)-1:]; flags != "" && strings.Contains("HduAexXTwmbcFtrEKU", last) && !strings.ContainsAny(s[1:], "o") && i+1 < len(args) {
				i++ // the value of the last flag of the group
			}
			continue
		case tool != "curl" && (s == "-O" || s == "--output-document") && i+1 < len(args):
			outputs = append(outputs, args[i+1])
			remoteName, toStdout = false, args[i+1] == "-"
			i++
			continue
		case tool != "curl" && strings.HasPrefix(s, "--output-document="):
			o := strings.TrimPrefix(s, "--output-document=")
			outputs = append(outputs, o)
			remoteName, toStdout = false, o == "-"
			continue
		case tool != "curl" && (s == "-P" || s == "--directory-prefix") && i+1 < len(args):
			dir = args[i+1]
			i++
			continue
		case tool != "curl" && len(s) > 2 && s[0] == '-' && s[1] != '-' && strings.Contains(s[1:], "O"):
			// wget -qO- URL, -qO FILE, -O/tmp/x
			k := strings.IndexByte(s, 'O')
			o := s[k+1:]
			if o == "" && i+1 < len(args) {
				o = args[i+1]
				i++
			}
			outputs = append(outputs, o)
			remoteName, toStdout = false, o == "-"
			continue
		case strings.HasPrefix(s, "-"):
			if curlValueFlags[s] && i+1 < len(args) {
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
	var out []*fetchRec
	for _, u := range urls {
		host, _ := urlHost(u)
		var files []string
		for _, o := range outputs {
			if o != "-" {
				files = append(files, o)
			}
		}
		if remoteName && len(outputs) == 0 {
			if b := path.Base(urlPath(u)); b != "/" && b != "." {
				files = append(files, b)
			}
		}
		if toStdout {
			files = append(files, ctx.outFiles...)
		}
		for i, f := range files {
			if dir != "" && !path.IsAbs(f) {
				f = path.Join(dir, f)
			}
			if abs, ok := a.resolve(f); ok {
				f = abs
			}
			files[i] = f
		}
		r := a.download(tool, host, u, files...)
		out = append(out, r)
	}
	return out
}

// urlArgs reports every argument (or flag value) that is a URL, as pip's
// "--index-url URL" or npm's "install https://…" are.
func (a *stepAnalysis) urlArgs(tool string, args []string) []*fetchRec {
	var out []*fetchRec
	for _, s := range args {
		if _, v, ok := strings.Cut(s, "="); ok && strings.HasPrefix(s, "-") {
			s = v
		}
		if strings.HasPrefix(s, "-") {
			continue
		}
		if host, ok := urlHost(s); ok {
			out = append(out, a.download(tool, host, s))
		}
	}
	return out
}

// embeddedURLs finds URLs inside code passed to an interpreter when the
// code fetches (urlopen, requests, LWP, fetch …).
func (a *stepAnalysis) embeddedURLs(tool, script string) {
	lower := strings.ToLower(script)
	if !strings.Contains(lower, "urlopen") && !strings.Contains(lower, "urlretrieve") && !strings.Contains(lower, "requests.") &&
		!strings.Contains(lower, "lwp") && !strings.Contains(lower, "fetch(") && !strings.Contains(lower, "http.get") &&
		!strings.Contains(lower, "open-uri") && !strings.Contains(lower, "file_get_contents") && !strings.Contains(lower, "getstore") &&
		!strings.Contains(lower, "downloadstring") && !strings.Contains(lower, "downloadfile") && !strings.Contains(lower, "httpx.") && !strings.Contains(lower, "wget.download") {
		return
	}
	for _, field := range strings.FieldsFunc(script, func(r rune) bool { return strings.ContainsRune("'\"`() ,;", r) }) {
		if host, ok := urlHost(field); ok {
			a.download(tool, host, field)
		}
	}
}
