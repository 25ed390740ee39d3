package policy

import (
	"fmt"
	"regexp"
	"strings"
)

// glob matches "registry/repository" strings. "*" and "?" stay within one
// path segment and "**" crosses segments, so "ghcr.io/acme/*" does not
// silently admit "ghcr.io/acme/team/app". Globs compile to anchored Go
// regular expressions, which match in linear time whatever the input.
type glob struct {
	src string
	re  *regexp.Regexp
}

func compileGlob(pattern string) (glob, error) {
	p := strings.ToLower(strings.TrimSpace(pattern))
	if p == "" {
		return glob{}, fmt.Errorf("empty glob")
	}
	if strings.ContainsAny(p, " \t\n") {
		return glob{}, fmt.Errorf("glob %q contains white space", pattern)
	}
	p = normaliseDockerHub(p)
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(p); i++ {
		switch c := p[i]; c {
		case '*':
			if i+1 < len(p) && p[i+1] == '*' {
				b.WriteString(".*")
				i++
			} else {
				b.WriteString("[^/]*")
			}
		case '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return glob{}, fmt.Errorf("glob %q: %v", pattern, err)
	}
	return glob{src: pattern, re: re}, nil
}

func (g glob) match(s string) bool { return g.re.MatchString(strings.ToLower(s)) }

// normaliseDockerHub rewrites the names Docker Hub goes by to the one
// go-containerregistry reports, so a glob written "docker.io/library/*"
// matches what name.ParseReference makes of "nginx".
func normaliseDockerHub(p string) string {
	for _, alias := range []string{"docker.io/", "registry-1.docker.io/"} {
		if strings.HasPrefix(p, alias) {
			return "index.docker.io/" + strings.TrimPrefix(p, alias)
		}
	}
	return p
}

func compileGlobs(field string, patterns []string) ([]glob, error) {
	gs := make([]glob, 0, len(patterns))
	for i, p := range patterns {
		g, err := compileGlob(p)
		if err != nil {
			return nil, &FieldError{Field: fmt.Sprintf("%s[%d]", field, i), Msg: err.Error()}
		}
		gs = append(gs, g)
	}
	return gs, nil
}

func matchAny(gs []glob, s string) (glob, bool) {
	for _, g := range gs {
		if g.match(s) {
			return g, true
		}
	}
	return glob{}, false
}
