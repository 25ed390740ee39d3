package policy

import (
	"path"
	"strings"
)

// A small POSIX shell lexer for build steps: words with quotes and
// escapes resolved, operators (| || && ; & newline), redirections, and
// command and process substitutions ($(…), `…`, <(…)) kept aside for
// separate analysis. It never fails: malformed input (an unbalanced quote
// or parenthesis) ends the word or substitution at the end of the text.

type word struct {
	text string
	subs []int // indexes into lexed.subs of substitutions inside the word
}

type token struct {
	op string // "" for a word
	w  word
}

type lexed struct {
	toks []token
	subs []string
}

// command is one simple command of a pipeline.
type command struct {
	words   []word
	outputs []string // targets of > and >> redirections
}

func lex(s string, depth int) *lexed {
	l := &lexed{}
	var cur strings.Builder
	var curSubs []int
	inWord := false
	flush := func() {
		if inWord {
			l.toks = append(l.toks, token{w: word{text: cur.String(), subs: curSubs}})
		}
		cur.Reset()
		curSubs = nil
		inWord = false
	}
	op := func(o string) {
		flush()
		l.toks = append(l.toks, token{op: o})
	}
	sub := func(text string) {
		curSubs = append(curSubs, len(l.subs))
		l.subs = append(l.subs, text)
		inWord = true
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && s[i+1] == '\n':
			i++ // line continuation
		case c == '\\' && i+1 < len(s):
			cur.WriteByte(s[i+1])
			inWord = true
			i++
		case c == ' ' || c == '\t' || c == '\r':
			flush()
		case c == '\n' || c == ';' || c == '(' || c == ')' || c == '{' && !inWord || c == '}' && !inWord:
			op(";")
		case c == '#' && !inWord:
			for i < len(s) && s[i] != '\n' {
				i++
			}
			op(";")
		case c == '|':
			if i+1 < len(s) && s[i+1] == '|' {
				op("||")
				i++
			} else {
				op("|")
			}
		case c == '&':
			switch {
			case i+1 < len(s) && s[i+1] == '&':
				op("&&")
				i++
			case i+1 < len(s) && s[i+1] == '>':
				op(">")
				i++
			default:
				op(";")
			}
		case (c == '<' || c == '>') && i+1 < len(s) && s[i+1] == '(':
			end := matchParen(s, i+2)
			flush()
			sub(s[i+2 : end])
			cur.WriteString(s[i:min(end+1, len(s))])
			flush()
			i = end
		case c == '>':
			if inWord && allDigits(cur.String()) { // 2>file
				cur.Reset()
				inWord = false
			}
			if i+1 < len(s) && s[i+1] == '>' {
				i++
			}
			if i+1 < len(s) && s[i+1] == '&' { // 2>&1
				i++
				for i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
					i++
				}
				flush()
				continue
			}
			op(">")
		case c == '<':
			op("<")
		case c == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				end = len(s) - i - 1
			}
			cur.WriteString(s[i+1 : i+1+end])
			inWord = true
			i += end + 1
		case c == '"':
			i = lexDouble(s, i+1, &cur, sub)
			inWord = true
		case c == '$' && i+1 < len(s) && s[i+1] == '(':
			end := matchParen(s, i+2)
			sub(s[i+2 : end])
			cur.WriteString(s[i:min(end+1, len(s))])
			i = end
		case c == '`':
			end := strings.IndexByte(s[i+1:], '`')
			if end < 0 {
				end = len(s) - i - 1
			}
			sub(s[i+1 : i+1+end])
			i += end + 1
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	flush()
	return l
}

// lexDouble reads a double-quoted string starting at i (after the quote)
// into cur and returns the index of the closing quote.
func lexDouble(s string, i int, cur *strings.Builder, sub func(string)) int {
	for ; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			return i
		case c == '\\' && i+1 < len(s):
			cur.WriteByte(s[i+1])
			i++
		case c == '$' && i+1 < len(s) && s[i+1] == '(':
			end := matchParen(s, i+2)
			sub(s[i+2 : end])
			cur.WriteString(s[i:min(end+1, len(s))])
			i = end
		case c == '`':
			end := strings.IndexByte(s[i+1:], '`')
			if end < 0 {
				end = len(s) - i - 1
			}
			sub(s[i+1 : i+1+end])
			i += end + 1
		default:
			cur.WriteByte(c)
		}
	}
	return len(s)
}

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

// words returns the text of every word, operators left out.
func (l *lexed) words() []string {
	var out []string
	for _, t := range l.toks {
		if t.op == "" {
			out = append(out, t.w.text)
		}
	}
	return out
}

// pipelines groups the tokens into pipelines of simple commands.
func (l *lexed) pipelines() [][]command {
	var out [][]command
	var pipeline []command
	var cmd command
	redirect := ""
	endCmd := func() {
		if len(cmd.words) > 0 || len(cmd.outputs) > 0 {
			pipeline = append(pipeline, cmd)
		}
		cmd = command{}
	}
	endPipeline := func() {
		endCmd()
		if len(pipeline) > 0 {
			out = append(out, pipeline)
		}
		pipeline = nil
	}
	for _, t := range l.toks {
		switch t.op {
		case "":
			switch redirect {
			case ">":
				cmd.outputs = append(cmd.outputs, t.w.text)
			case "<":
			default:
				cmd.words = append(cmd.words, t.w)
			}
			redirect = ""
		case "|":
			endCmd()
		case ">", "<":
			redirect = t.op
		default:
			endPipeline()
		}
	}
	endPipeline()
	return out
}

// commandWords drops leading variable assignments and command wrappers
// (sudo, env, exec, nohup, time …) so words[0] is the program run.
func commandWords(c command) []word {
	w := c.words
	for len(w) > 0 {
		t := w[0].text
		switch {
		case strings.Contains(t, "=") && !strings.HasPrefix(t, "-") && !strings.Contains(t, "/"):
			w = w[1:]
		case isWrapper(path.Base(t)):
			w = w[1:]
			for len(w) > 0 && strings.HasPrefix(w[0].text, "-") {
				w = w[1:]
			}
		default:
			return w
		}
	}
	return w
}

func isWrapper(name string) bool {
	switch name {
	case "sudo", "env", "exec", "nohup", "time", "command", "nice", "timeout", "stdbuf", "doas", "su-exec", "gosu", "chroot":
		return true
	}
	return false
}
