package check

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"
	"time"
)

// The JUnit XML schema CI systems read (Jenkins, GitLab, GitHub Actions'
// test reporters): a suite per manifest file, a test case per workload.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name      string      `xml:"name,attr"`
	Tests     int         `xml:"tests,attr"`
	Failures  int         `xml:"failures,attr"`
	Errors    int         `xml:"errors,attr"`
	Skipped   int         `xml:"skipped,attr"`
	Time      string      `xml:"time,attr"`
	Timestamp string      `xml:"timestamp,attr,omitempty"`
	Cases     []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	File      string        `xml:"file,attr"`
	Line      int           `xml:"line,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitProblem `xml:"failure,omitempty"`
	Error     *junitProblem `xml:"error,omitempty"`
	Skipped   *junitProblem `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitProblem struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report as JUnit XML: a test suite per manifest
// file, a test case per workload. A denied workload fails (the denial
// message is the failure's text); one that could not be judged, or whose
// registry could not be asked, is an error; one not judged (a patch) is
// skipped. An admitted workload passes, its warnings in system-out.
func WriteJUnit(w io.Writer, r *Report) error {
	all := junitSuites{Name: "buildguard check", Time: "0"}
	index := map[string]int{}
	for i := range r.Results {
		res := &r.Results[i]
		si, ok := index[res.File]
		if !ok {
			si = len(all.Suites)
			index[res.File] = si
			all.Suites = append(all.Suites, junitSuite{Name: displayFile(res.File), Time: "0"})
		}
		s := &all.Suites[si]
		if !res.CheckedAt.IsZero() && s.Timestamp == "" {
			s.Timestamp = res.CheckedAt.Format(time.RFC3339)
		}
		tc := junitCase{Name: fmt.Sprintf("%s %s/%s", res.Kind, res.Namespace, res.Name), Classname: displayFile(res.File),
			File: res.File, Line: res.Line, Time: "0"}
		var out strings.Builder
		for _, im := range res.Images {
			fmt.Fprintf(&out, "line %d: %s %s: %s: %s\n", im.Line, im.ContainerKind, im.Container, im.Image, im.Verdict)
		}
		switch {
		case res.Error != "":
			tc.Error = &junitProblem{Message: res.Error, Type: "error", Text: res.Error}
			s.Errors++
		case res.Skipped != "":
			tc.Skipped = &junitProblem{Message: res.Skipped}
			s.Skipped++
		case res.Unavailable():
			msg := "a registry could not be asked in time: the verdict rests on failurePolicy"
			tc.Error = &junitProblem{Message: msg, Type: "registry-unavailable", Text: msg + "\n" + strings.Join(res.Warnings(), "\n")}
			if res.Denied() {
				tc.Error.Text = msg + "\n" + res.DenyMessage()
			}
			s.Errors++
		case res.Denied():
			tc.Failure = &junitProblem{Message: firstLine(res.DenyMessage()), Type: strings.Join(denyRules(res), ","), Text: res.DenyMessage()}
			s.Failures++
		default:
			for _, warning := range res.Warnings() {
				fmt.Fprintf(&out, "Warning: %s\n", warning)
			}
		}
		tc.SystemOut = out.String()
		s.Tests++
		s.Cases = append(s.Cases, tc)
	}
	for _, s := range all.Suites {
		all.Tests += s.Tests
		all.Failures += s.Failures
		all.Errors += s.Errors
		all.Skipped += s.Skipped
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(all); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// denyRules are the rule IDs that deny a workload.
func denyRules(res *Result) []string {
	var out []string
	seen := map[string]bool{}
	add := func(rule string) {
		if !seen[rule] {
			seen[rule] = true
			out = append(out, rule)
		}
	}
	for _, im := range res.Images {
		if im.Verdict != "deny" {
			continue
		}
		for _, f := range im.Findings {
			if f.Action == "deny" {
				add(string(f.Rule))
			}
		}
	}
	for _, f := range res.Findings {
		if f.Action == "deny" {
			add(string(f.Rule))
		}
	}
	return out
}
