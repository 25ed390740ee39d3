package policy

import (
	"path"
	"strconv"
	"strings"
	"unicode/utf8"
)

// A small POSIX shell lexer for build steps. Words keep their parameter
// expansions and command substitutions as parts, so that the analysis can
// expand them as a shell would with the variables it knows; operators
// (| || && ; & newline), redirections and here-documents are tokens of
// their own. It never fails: malformed input (an unbalanced quote, brace
// or parenthesis) ends the construct at the end of the text.

// partKind says what a part of a word is.
type partKind uint8

const (
	partLit   partKind = iota // literal text
	partParam                 // $NAME or ${…}: text is NAME or what is between the braces
	partSub                   // $(…) or `…`: sub indexes lexed.subs
	partArith                 // $((…)): text is the expression
)

type part struct {
	kind   partKind
	text   string
	quoted bool // inside double quotes: no field splitting
	sub    int
}

// word is one shell word as its parts.
type word struct {
	parts []part
}

// literal reports the word's text when it has no expansion.
func (w word) literal() (string, bool) {
	var b strings.Builder
	for _, p := range w.parts {
		if p.kind != partLit {
			return "", false
		}
		b.WriteString(p.text)
	}
	return b.String(), true
}

// raw returns the word with its expansions as written: $NAME, ${…}, $(…).
func (w word) raw(l *lexed) string {
	var b strings.Builder
	for _, p := range w.parts {
		switch p.kind {
		case partLit:
			b.WriteString(p.text)
		case partParam:
			b.WriteString("${" + p.text + "}")
		case partSub:
			b.WriteString("$(" + compact(l.subs[p.sub]) + ")")
		case partArith:
			b.WriteString("$((" + p.text + "))")
		}
	}
	return b.String()
}

// compact folds white space, for quoting unknown command output.
func compact(s string) string { return strings.Join(strings.Fields(s), " ") }

type token struct {
	op string // "" for a word
	w  word
	// body is the text of a here-document or here-string (op "<<", "<<<").
	body string
}

type lexed struct {
	toks []token
	subs []string
}

// Operators. Redirections carry their target as the next word token,
// except here-documents, whose body is in the token itself.
const (
	opSeq     = ";"   // ; ;; & newline and the grouping ( ) { }
	opAnd     = "&&"  // and
	opOr      = "||"  // or
	opPipe    = "|"   // | and |&
	opOut     = ">"   // > >> >| &> &>> and >& FILE
	opIn      = "<"   // < and <>
	opDup     = ">&"  // n>&m, n<&m: a file descriptor duplicated onto another
	opHereDoc = "<<"  // here-document, body in token.body
	opHereStr = "<<<" // here-string, the word follows
)

// maxLexDepth bounds nested quoting and substitution while lexing.
const maxLexDepth = 32

func lex(s string) *lexed {
	l := &lexed{toks: make([]token, 0, min(len(s)/12+4, 1024))}
	lx := lexer{s: s, l: l}
	lx.run()
	return l
}

type lexer struct {
	s   string
	i   int
	l   *lexed
	cur []part
	in  bool // a word is being built
	lit strings.Builder
	// pending here-documents whose bodies start after the next newline.
	pending []hereDoc
}

type hereDoc struct {
	tok       int // index of the << token
	delim     string
	stripTabs bool
}

func (x *lexer) flushLit(quoted bool) {
	if x.lit.Len() > 0 {
		x.cur = append(x.cur, part{kind: partLit, text: x.lit.String(), quoted: quoted})
		x.lit.Reset()
	}
}

func (x *lexer) endWord() {
	x.flushLit(false)
	if x.in {
		x.l.toks = append(x.l.toks, token{w: word{parts: x.cur}})
	}
	x.cur, x.in = nil, false
}

func (x *lexer) op(o string) {
	x.endWord()
	x.l.toks = append(x.l.toks, token{op: o})
}

func (x *lexer) run() {
	s := x.s
	for x.i < len(s) {
		c := s[x.i]
		switch {
		case c == '\\' && x.i+1 < len(s) && s[x.i+1] == '\n':
			x.i += 2 // line continuation
		case c == '\\' && x.i+1 < len(s):
			x.lit.WriteByte(s[x.i+1])
			x.in = true
			x.i += 2
		case c == ' ' || c == '\t' || c == '\r':
			x.endWord()
			x.i++
		case c == '\n':
			x.op(opSeq)
			x.i++
			x.readHereDocs()
		case c == '#' && !x.in:
			for x.i < len(s) && s[x.i] != '\n' {
				x.i++
			}
		case c == ';' || c == '(' || c == ')':
			x.op(opSeq)
			x.i++
		case (c == '{' || c == '}') && !x.in && (x.i+1 >= len(s) || strings.IndexByte(" \t\n;", s[x.i+1]) >= 0 || c == '}'):
			x.op(opSeq)
			x.i++
		case c == '|':
			switch {
			case strings.HasPrefix(s[x.i:], "||"):
				x.op(opOr)
				x.i += 2
			case strings.HasPrefix(s[x.i:], "|&"):
				x.op(opPipe)
				x.i += 2
			default:
				x.op(opPipe)
				x.i++
			}
		case c == '&':
			switch {
			case strings.HasPrefix(s[x.i:], "&&"):
				x.op(opAnd)
				x.i += 2
			case strings.HasPrefix(s[x.i:], "&>>"):
				x.op(opOut)
				x.i += 3
			case strings.HasPrefix(s[x.i:], "&>"):
				x.op(opOut)
				x.i += 2
			default:
				x.op(opSeq)
				x.i++
			}
		case (c == '<' || c == '>') && x.i+1 < len(s) && s[x.i+1] == '(':
			// Process substitution: <(cmd) or >(cmd), a word of its own.
			x.endWord()
			end := matchParen(s, x.i+2)
			x.cur = append(x.cur, part{kind: partSub, sub: len(x.l.subs)})
			x.l.subs = append(x.l.subs, s[x.i+2:end])
			x.in = true
			x.endWord()
			x.i = min(end+1, len(s))
		case c == '>' || c == '<':
			x.redirect()
		case c == '\'':
			end := strings.IndexByte(s[x.i+1:], '\'')
			if end < 0 {
				end = len(s) - x.i - 1
			}
			x.flushLit(false)
			x.cur = append(x.cur, part{kind: partLit, text: s[x.i+1 : x.i+1+end], quoted: true})
			x.in = true
			x.i += end + 2
		case c == '"':
			x.flushLit(false)
			x.in = true
			x.i = x.double(x.i + 1)
		case c == '$':
			x.dollar(false)
		case c == '`':
			x.flushLit(false)
			end := strings.IndexByte(s[x.i+1:], '`')
			if end < 0 {
				end = len(s) - x.i - 1
			}
			x.cur = append(x.cur, part{kind: partSub, sub: len(x.l.subs)})
			x.l.subs = append(x.l.subs, s[x.i+1:x.i+1+end])
			x.in = true
			x.i += end + 2
		default:
			x.lit.WriteByte(c)
			x.in = true
			x.i++
		}
	}
	x.endWord()
	// A here-document whose body never came still gets an empty body.
	x.pending = nil
}

// redirect lexes a redirection operator at x.i. A word made only of
// digits just before it is the file descriptor, not a word.
func (x *lexer) redirect() {
	s := x.s
	if x.in && len(x.cur) == 0 && allDigits(x.lit.String()) {
		x.lit.Reset()
		x.in = false
	}
	x.endWord()
	rest := s[x.i:]
	switch {
	case strings.HasPrefix(rest, "<<<"):
		x.l.toks = append(x.l.toks, token{op: opHereStr})
		x.i += 3
	case strings.HasPrefix(rest, "<<"):
		strip := strings.HasPrefix(rest, "<<-")
		x.i += 2
		if strip {
			x.i++
		}
		for x.i < len(s) && (s[x.i] == ' ' || s[x.i] == '\t') {
			x.i++
		}
		// The delimiter: quotes around it are removed.
		start := x.i
		for x.i < len(s) && strings.IndexByte(" \t\n;|&<>()", s[x.i]) < 0 {
			x.i++
		}
		delim := strings.NewReplacer(`'`, "", `"`, "", `\`, "").Replace(s[start:x.i])
		x.l.toks = append(x.l.toks, token{op: opHereDoc})
		x.pending = append(x.pending, hereDoc{tok: len(x.l.toks) - 1, delim: delim, stripTabs: strip})
	case strings.HasPrefix(rest, ">&"), strings.HasPrefix(rest, "<&"):
		x.i += 2
		j := x.i
		for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '-') {
			j++
		}
		if j > x.i && (j == len(s) || strings.IndexByte(" \t\n;|&<>()", s[j]) >= 0) {
			x.l.toks = append(x.l.toks, token{op: opDup})
			x.i = j
			return
		}
		// >& FILE sends both stdout and stderr to FILE.
		x.l.toks = append(x.l.toks, token{op: opOut})
	case strings.HasPrefix(rest, ">>"), strings.HasPrefix(rest, ">|"):
		x.l.toks = append(x.l.toks, token{op: opOut})
		x.i += 2
	case strings.HasPrefix(rest, "<>"):
		x.l.toks = append(x.l.toks, token{op: opIn})
		x.i += 2
	case rest[0] == '>':
		x.l.toks = append(x.l.toks, token{op: opOut})
		x.i++
	default:
		x.l.toks = append(x.l.toks, token{op: opIn})
		x.i++
	}
}

// readHereDocs reads the bodies of pending here-documents, which start at
// x.i, just after a newline.
func (x *lexer) readHereDocs() {
	for _, h := range x.pending {
		var body strings.Builder
		for x.i < len(x.s) {
			end := strings.IndexByte(x.s[x.i:], '\n')
			line := x.s[x.i:]
			if end >= 0 {
				line = x.s[x.i : x.i+end]
				x.i += end + 1
			} else {
				x.i = len(x.s)
			}
			if h.stripTabs {
				line = strings.TrimLeft(line, "\t")
			}
			if line == h.delim {
				break
			}
			body.WriteString(line)
			body.WriteByte('\n')
		}
		x.l.toks[h.tok].body = body.String()
	}
	x.pending = nil
}

// double reads a double-quoted string whose content starts at i and
// returns the index after the closing quote.
func (x *lexer) double(i int) int {
	s := x.s
	for i < len(s) {
		c := s[i]
		switch {
		case c == '"':
			x.flushLit(true)
			return i + 1
		case c == '\\' && i+1 < len(s) && strings.IndexByte("$`\"\\\n", s[i+1]) >= 0:
			if s[i+1] != '\n' {
				x.lit.WriteByte(s[i+1])
			}
			i += 2
		case c == '$':
			x.i = i
			x.dollar(true)
			i = x.i
		case c == '`':
			x.flushLit(true)
			end := strings.IndexByte(s[i+1:], '`')
			if end < 0 {
				end = len(s) - i - 1
			}
			x.cur = append(x.cur, part{kind: partSub, sub: len(x.l.subs), quoted: true})
			x.l.subs = append(x.l.subs, s[i+1:i+1+end])
			i += end + 2
		default:
			x.lit.WriteByte(c)
			i++
		}
	}
	x.flushLit(true)
	return len(s)
}

// dollar lexes what starts with '$' at x.i.
func (x *lexer) dollar(quoted bool) {
	s := x.s
	i := x.i
	x.in = true
	if i+1 >= len(s) {
		x.lit.WriteByte('$')
		x.i++
		return
	}
	switch c := s[i+1]; {
	case strings.HasPrefix(s[i:], "$(("):
		x.flushLit(quoted)
		end := matchParen(s, i+3)
		x.cur = append(x.cur, part{kind: partArith, text: s[i+3 : end], quoted: quoted})
		// Skip the second closing parenthesis as well.
		x.i = min(end+2, len(s))
	case c == '(':
		x.flushLit(quoted)
		end := matchParen(s, i+2)
		x.cur = append(x.cur, part{kind: partSub, sub: len(x.l.subs), quoted: quoted})
		x.l.subs = append(x.l.subs, s[i+2:end])
		x.i = min(end+1, len(s))
	case c == '{':
		x.flushLit(quoted)
		end := matchBrace(s, i+2)
		x.cur = append(x.cur, part{kind: partParam, text: s[i+2 : end], quoted: quoted})
		x.i = min(end+1, len(s))
	case c == '\'' && !quoted:
		// ANSI-C quoting: $'\x63url' is "curl".
		x.flushLit(false)
		end := i + 2
		for end < len(s) && s[end] != '\'' {
			if s[end] == '\\' {
				end++
			}
			end++
		}
		end = min(end, len(s))
		x.cur = append(x.cur, part{kind: partLit, text: ansiC(s[i+2 : end]), quoted: true})
		x.i = min(end+1, len(s))
	case isNameStart(c):
		x.flushLit(quoted)
		j := i + 1
		for j < len(s) && isNameChar(s[j]) {
			j++
		}
		x.cur = append(x.cur, part{kind: partParam, text: s[i+1 : j], quoted: quoted})
		x.i = j
	case c >= '0' && c <= '9' || strings.IndexByte("@*#?$!-", c) >= 0:
		x.flushLit(quoted)
		x.cur = append(x.cur, part{kind: partParam, text: s[i+1 : i+2], quoted: quoted})
		x.i = i + 2
	default:
		x.lit.WriteByte('$')
		x.i++
	}
}

func isNameStart(c byte) bool { return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
func isNameChar(c byte) bool  { return isNameStart(c) || c >= '0' && c <= '9' }

// matchParen returns the index of the ')' closing a "(" whose content
// starts at i, skipping quoted text; len(s) when there is none.
func matchParen(s string, i int) int {
	depth := 1
	for ; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return len(s)
			}
			i += end + 1
		case '"':
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' {
					i++
				}
			}
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return len(s)
}

// matchBrace returns the index of the '}' closing "${" whose content
// starts at i; len(s) when there is none.
func matchBrace(s string, i int) int {
	depth := 1
	for ; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '\'':
			if end := strings.IndexByte(s[i+1:], '\''); end >= 0 {
				i += end + 1
			}
		case '{':
			depth++
		case '}':
			depth--
			if depth == 0 {
				return i
			}
		}
	}
	return len(s)
}

// ansiC decodes the escapes of $'…'.
func ansiC(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		i++
		switch e := s[i]; e {
		case 'n':
			b.WriteByte('\n')
		case 't':
			b.WriteByte('\t')
		case 'r':
			b.WriteByte('\r')
		case 'a':
			b.WriteByte(7)
		case 'b':
			b.WriteByte(8)
		case 'e', 'E':
			b.WriteByte(27)
		case 'x':
			j := i + 1
			for j < len(s) && j < i+3 && hexDigit(s[j]) {
				j++
			}
			if v, err := strconv.ParseUint(s[i+1:j], 16, 8); err == nil {
				b.WriteByte(byte(v))
				i = j - 1
			} else {
				b.WriteString(`\x`)
			}
		case 'u', 'U':
			n := 4
			if e == 'U' {
				n = 8
			}
			j := i + 1
			for j < len(s) && j < i+1+n && hexDigit(s[j]) {
				j++
			}
			if v, err := strconv.ParseUint(s[i+1:j], 16, 32); err == nil && utf8.ValidRune(rune(v)) {
				b.WriteRune(rune(v))
				i = j - 1
			} else {
				b.WriteByte('\\')
				b.WriteByte(e)
			}
		case '0', '1', '2', '3', '4', '5', '6', '7':
			j := i
			for j < len(s) && j < i+3 && s[j] >= '0' && s[j] <= '7' {
				j++
			}
			v, _ := strconv.ParseUint(s[i:j], 8, 16)
			b.WriteByte(byte(v))
			i = j - 1
		default:
			b.WriteByte(e)
		}
	}
	return b.String()
}

// words returns the literal text of every word, expansions as written,
// operators left out.
func (l *lexed) words() []string {
	var out []string
	for _, t := range l.toks {
		if t.op == "" {
			out = append(out, t.w.raw(l))
		}
	}
	return out
}

// redir is one redirection of a command.
type redir struct {
	op     string // opOut, opIn or opDup
	target word
}

// command is one simple command of a pipeline.
type command struct {
	words  []word
	redirs []redir
	// stdin is the text a here-document or here-string feeds the command.
	stdin    *word
	hereBody string
	hasHere  bool
}

// pipeline is a pipeline and the operator that joined it to the one
// before: "" for the first, opSeq, opAnd or opOr.
type pipeline struct {
	after string
	cmds  []command
}

// pipelines groups the tokens into pipelines of simple commands.
func (l *lexed) pipelines() []pipeline {
	var out []pipeline
	var cur pipeline
	var cmd command
	pendingOp := ""
	sep := ""
	endCmd := func() {
		if len(cmd.words) > 0 || len(cmd.redirs) > 0 || cmd.hasHere {
			cur.cmds = append(cur.cmds, cmd)
		}
		cmd = command{}
	}
	endPipeline := func(next string) {
		endCmd()
		if len(cur.cmds) > 0 {
			cur.after = sep
			out = append(out, cur)
			sep = next
		} else if sep == "" || next != opSeq {
			sep = next
		}
		cur = pipeline{}
	}
	for _, t := range l.toks {
		switch t.op {
		case "":
			switch pendingOp {
			case opOut, opIn, opDup:
				cmd.redirs = append(cmd.redirs, redir{op: pendingOp, target: t.w})
			case opHereStr:
				w := t.w
				cmd.stdin = &w
			default:
				cmd.words = append(cmd.words, t.w)
			}
			pendingOp = ""
		case opOut, opIn, opDup, opHereStr:
			pendingOp = t.op
		case opHereDoc:
			cmd.hasHere = true
			cmd.hereBody = t.body
			pendingOp = ""
		case opPipe:
			pendingOp = ""
			endCmd()
		default:
			pendingOp = ""
			endPipeline(t.op)
		}
	}
	endPipeline("")
	return out
}

// shellWords are the shells whose -c argument is a script.
func isShell(name string) bool {
	switch path.Base(name) {
	case "sh", "bash", "dash", "zsh", "ash", "ksh", "mksh", "yash", "rbash":
		return true
	}
	return false
}

// isInterpreter reports whether name runs code in a language other than
// the shell, from -c/-e or from its standard input.
func isInterpreter(name string) bool {
	n := path.Base(name)
	for _, p := range []string{"python", "perl", "ruby", "node", "nodejs", "php", "lua", "tclsh"} {
		if n == p || strings.HasPrefix(n, p) && strings.Trim(n[len(p):], "0123456789.") == "" {
			return true
		}
	}
	return false
}

// Expansion limits: how many values a variable may hold, how many
// variants of one word or command are examined, how long an expanded
// text may grow, and how long a value patterns are matched against.
const (
	maxCandidates   = 16
	maxVariants     = 16
	maxTextBytes    = 64 << 10
	maxPatternInput = 4 << 10
	maxExpandDepth  = 4
)

// lookupFunc returns the candidate values of a variable, and whether it
// is known at all.
type lookupFunc func(name string) ([]string, bool)

// expandWord expands w as a shell would, with the variables look knows
// and the known outputs of command substitutions (subs[i] nil: unknown).
// A variable may hold several candidate values (assigned in different
// branches); the result has one variant per candidate, at most
// maxVariants, so that every candidate of every part is used at least
// once. With split, unquoted expansions are split into fields at white
// space, as in command arguments; without it (assignments) they are not.
// Unknown variables and substitutions stay as written.
func expandWord(l *lexed, w word, look lookupFunc, subs [][]string, split bool) [][]string {
	return expandParts(l, w.parts, look, subs, split, 0)
}

func expandParts(l *lexed, parts []part, look lookupFunc, subs [][]string, split bool, depth int) [][]string {
	if len(parts) == 1 && parts[0].kind == partLit {
		return [][]string{{parts[0].text}} // most words: nothing to expand
	}
	cands := make([][]string, len(parts))
	splittable := make([]bool, len(parts))
	n := 1
	for i, p := range parts {
		switch p.kind {
		case partLit:
			cands[i] = []string{p.text}
		case partParam:
			cands[i] = expandParam(l, p.text, look, depth)
			splittable[i] = split && !p.quoted
		case partSub:
			if p.sub < len(subs) && subs[p.sub] != nil {
				cands[i] = subs[p.sub]
				splittable[i] = split && !p.quoted
			} else if l != nil && p.sub < len(l.subs) {
				cands[i] = []string{"$(" + compact(l.subs[p.sub]) + ")"}
			} else {
				cands[i] = []string{"$(…)"}
			}
		case partArith:
			cands[i] = []string{"$((" + p.text + "))"}
		}
		if len(cands[i]) == 0 {
			cands[i] = []string{""}
		}
		n = max(n, len(cands[i]))
	}
	n = min(n, maxVariants)
	out := make([][]string, 0, n)
	for k := 0; k < n; k++ {
		var fields []string
		var cur strings.Builder
		open := false // cur is a field, possibly empty ("")
		for i, p := range parts {
			c := cands[i][k%len(cands[i])]
			if !splittable[i] {
				if cur.Len()+len(c) <= maxTextBytes {
					cur.WriteString(c)
				}
				open = open || p.quoted || c != ""
				continue
			}
			fs := strings.Fields(c)
			if len(fs) > 0 && isSpace(c[0]) && open {
				fields = append(fields, cur.String())
				cur.Reset()
				open = false
			}
			for j, f := range fs {
				if j > 0 {
					fields = append(fields, cur.String())
					cur.Reset()
				}
				if cur.Len()+len(f) <= maxTextBytes {
					cur.WriteString(f)
				}
				open = true
			}
			if len(fs) > 0 && isSpace(c[len(c)-1]) {
				fields = append(fields, cur.String())
				cur.Reset()
				open = false
			}
		}
		if open || cur.Len() > 0 {
			fields = append(fields, cur.String())
		}
		out = append(out, fields)
	}
	return out
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// joinFields renders a variant of a word as one string.
func joinFields(f []string) string { return strings.Join(f, " ") }

// expandText expands $NAME and ${…} in s as inside double quotes (used
// for the words of ${VAR:-word} and the patterns of ${VAR#pattern}) and
// returns the first variant.
func expandText(l *lexed, s string, look lookupFunc, depth int) string {
	if depth > maxExpandDepth || !strings.Contains(s, "$") {
		return s
	}
	sub := &lexed{}
	x := lexer{s: s, l: sub}
	x.in = true
	x.double(0)
	v := expandParts(sub, x.cur, look, nil, false, depth+1)
	if len(v) == 0 {
		return ""
	}
	return joinFields(v[0])
}

// expandParam evaluates the inside of ${…} (or a bare $NAME).
func expandParam(l *lexed, expr string, look lookupFunc, depth int) []string {
	raw := []string{"${" + expr + "}"}
	if depth > maxExpandDepth {
		return raw
	}
	if len(expr) > 1 && expr[0] == '#' && validName(expr[1:]) {
		vals, ok := look(expr[1:])
		if !ok {
			return raw
		}
		out := make([]string, len(vals))
		for i, v := range vals {
			out[i] = strconv.Itoa(len(v))
		}
		return out
	}
	n := 0
	for n < len(expr) && isNameChar(expr[n]) && !(n == 0 && expr[0] >= '0' && expr[0] <= '9') {
		n++
	}
	if n == 0 {
		return raw // $1, $@, $? and friends: unknown at build time
	}
	name, rest := expr[:n], expr[n:]
	vals, ok := look(name)
	if rest == "" {
		if !ok {
			return raw
		}
		return vals
	}
	apply := func(f func(v string) string) []string {
		if !ok {
			return raw
		}
		out := make([]string, len(vals))
		for i, v := range vals {
			out[i] = f(v)
		}
		return out
	}
	switch {
	case strings.HasPrefix(rest, ":-"), strings.HasPrefix(rest, ":="), strings.HasPrefix(rest, "-"), strings.HasPrefix(rest, "="):
		colon := rest[0] == ':'
		w := rest[1:]
		if colon {
			w = rest[2:]
		}
		def := expandText(l, w, look, depth)
		if !ok {
			return []string{def}
		}
		return apply(func(v string) string {
			if v == "" && colon {
				return def
			}
			return v
		})
	case strings.HasPrefix(rest, ":+"), strings.HasPrefix(rest, "+"):
		colon := rest[0] == ':'
		alt := expandText(l, strings.TrimPrefix(strings.TrimPrefix(rest, ":"), "+"), look, depth)
		if !ok {
			return []string{""}
		}
		return apply(func(v string) string {
			if v == "" && colon {
				return ""
			}
			return alt
		})
	case strings.HasPrefix(rest, ":?"), strings.HasPrefix(rest, "?"):
		return apply(func(v string) string { return v })
	case strings.HasPrefix(rest, "##"), strings.HasPrefix(rest, "#"), strings.HasPrefix(rest, "%%"), strings.HasPrefix(rest, "%"):
		op := rest[:1]
		longest := len(rest) > 1 && rest[1] == rest[0]
		pat := rest[1:]
		if longest {
			pat = rest[2:]
		}
		pat = expandText(l, pat, look, depth)
		return apply(func(v string) string { return trimPattern(v, pat, op == "#", longest) })
	case strings.HasPrefix(rest, "/"):
		all := strings.HasPrefix(rest, "//")
		body := rest[1:]
		if all {
			body = rest[2:]
		}
		pat, rep, _ := strings.Cut(body, "/")
		pat, rep = expandText(l, pat, look, depth), expandText(l, rep, look, depth)
		return apply(func(v string) string {
			if pat == "" || strings.ContainsAny(pat, "*?[#%") {
				return v
			}
			if all {
				return strings.ReplaceAll(v, pat, rep)
			}
			return strings.Replace(v, pat, rep, 1)
		})
	case rest == "^^", rest == "^":
		return apply(strings.ToUpper)
	case rest == ",,", rest == ",":
		return apply(strings.ToLower)
	case rest[0] == ':':
		return apply(func(v string) string { return v }) // substring: the whole value is a fair guess
	}
	return raw
}

func validName(s string) bool {
	if s == "" || !isNameStart(s[0]) {
		return false
	}
	for i := 1; i < len(s); i++ {
		if !isNameChar(s[i]) {
			return false
		}
	}
	return true
}

// trimPattern implements ${v#pat}, ${v##pat}, ${v%pat} and ${v%%pat}.
func trimPattern(v, pat string, prefix, longest bool) string {
	if len(v) > maxPatternInput || len(pat) > maxPatternInput {
		return v
	}
	if prefix {
		if longest {
			for i := len(v); i >= 0; i-- {
				if shMatch(pat, v[:i]) {
					return v[i:]
				}
			}
		} else {
			for i := 0; i <= len(v); i++ {
				if shMatch(pat, v[:i]) {
					return v[i:]
				}
			}
		}
		return v
	}
	if longest {
		for i := 0; i <= len(v); i++ {
			if shMatch(pat, v[i:]) {
				return v[:i]
			}
		}
	} else {
		for i := len(v); i >= 0; i-- {
			if shMatch(pat, v[i:]) {
				return v[:i]
			}
		}
	}
	return v
}

// shMatch reports whether s matches the shell pattern pat: * ? and
// bracket expressions ([a-z], [!x]); a backslash quotes the next byte.
// It backtracks only to the last star, so it runs in O(len(pat)·len(s)).
func shMatch(pat, s string) bool {
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		if p < len(pat) {
			switch pat[p] {
			case '*':
				starP, starI = p, i
				p++
				continue
			case '?':
				p++
				i++
				continue
			case '[':
				if ok, next, valid := matchClass(pat, p, s[i]); valid {
					if ok {
						p = next
						i++
						continue
					}
				} else if s[i] == '[' {
					p++
					i++
					continue
				}
			case '\\':
				if p+1 < len(pat) && pat[p+1] == s[i] {
					p += 2
					i++
					continue
				}
			default:
				if pat[p] == s[i] {
					p++
					i++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		starI++
		p, i = starP+1, starI
	}
	for p < len(pat) && pat[p] == '*' {
		p++
	}
	return p == len(pat)
}

// matchClass matches c against the bracket expression at pat[p] and
// returns whether it matched, the index after it, and whether it was a
// valid bracket expression at all.
func matchClass(pat string, p int, c byte) (matched bool, next int, valid bool) {
	i := p + 1
	negate := false
	if i < len(pat) && (pat[i] == '!' || pat[i] == '^') {
		negate = true
		i++
	}
	first := true
	for i < len(pat) && (pat[i] != ']' || first) {
		first = false
		lo := pat[i]
		if lo == '[' && i+1 < len(pat) && pat[i+1] == ':' {
			end := strings.Index(pat[i+2:], ":]")
			if end >= 0 {
				if classHas(pat[i+2:i+2+end], c) {
					matched = true
				}
				i += end + 4
				continue
			}
		}
		hi := lo
		if i+2 < len(pat) && pat[i+1] == '-' && pat[i+2] != ']' {
			hi = pat[i+2]
			i += 2
		}
		if lo <= c && c <= hi {
			matched = true
		}
		i++
	}
	if i >= len(pat) {
		return false, 0, false
	}
	return matched != negate, i + 1, true
}

func classHas(class string, c byte) bool {
	switch class {
	case "alpha":
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
	case "digit":
		return c >= '0' && c <= '9'
	case "alnum":
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
	case "space":
		return isSpace(c)
	case "upper":
		return c >= 'A' && c <= 'Z'
	case "lower":
		return c >= 'a' && c <= 'z'
	}
	return false
}
