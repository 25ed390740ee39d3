package check

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// WriteText writes the report for people: by file, each workload with its
// line, what kubectl would say of it (the denial message, or the
// warnings), and the line of each image; then a summary.
func WriteText(w io.Writer, r *Report) error {
	ew := &errWriter{w: w}
	file := ""
	for i := range r.Results {
		res := &r.Results[i]
		if res.File != file {
			if file != "" {
				fmt.Fprintln(ew)
			}
			file = res.File
			fmt.Fprintf(ew, "%s\n", displayFile(file))
		}
		fmt.Fprintf(ew, "  line %d: %s %s/%s: %s\n", res.Line, res.Kind, res.Namespace, res.Name, headline(res))
		switch {
		case res.Error != "":
			fmt.Fprintf(ew, "    %s\n", res.Error)
			continue
		case res.Skipped != "":
			fmt.Fprintf(ew, "    %s\n", res.Skipped)
			continue
		case res.Denied():
			indent(ew, res.DenyMessage(), "    ")
		default:
			for _, warning := range res.Warnings() {
				fmt.Fprintf(ew, "    Warning: %s\n", warning)
			}
		}
		for _, im := range res.Images {
			digest := im.Digest
			if digest == "" {
				digest = "not resolved"
			}
			fmt.Fprintf(ew, "    line %d: %s %s: %s (%s): %s\n", im.Line, im.ContainerKind, im.Container, im.Image, digest, im.Verdict)
		}
	}
	if len(r.Results) > 0 {
		fmt.Fprintln(ew)
	}
	c := r.Counts()
	fmt.Fprintf(ew, "%d workloads in %d objects of %d files: %d denied, %d would be denied (audit or warn mode), %d warned, %d allowed, %d not judged, %d errors.\n",
		len(r.Results), r.Objects, len(r.Files), c["denied"], c["would-deny"], c["warned"], c["allowed"], c["skipped"], c["error"])
	return ew.err
}

// headline is a workload's result in a few words.
func headline(res *Result) string {
	switch res.Word() {
	case "denied":
		return "DENIED"
	case "would-deny":
		return fmt.Sprintf("WOULD BE DENIED (admitted in %s mode)", res.Mode)
	case "warned":
		return "admitted with warnings"
	case "skipped":
		return "not judged"
	case "error":
		return "ERROR"
	}
	return "allowed"
}

func displayFile(f string) string {
	if f == "-" {
		return "(standard input)"
	}
	return f
}

func indent(w io.Writer, s, prefix string) {
	for _, l := range strings.Split(s, "\n") {
		fmt.Fprintf(w, "%s%s\n", prefix, l)
	}
}

// WriteJSON writes one JSON object per workload, one a line, in the order
// of the manifests; docs/check.md is their schema.
func WriteJSON(w io.Writer, r *Report) error {
	enc := json.NewEncoder(w)
	for i := range r.Results {
		if err := enc.Encode(&r.Results[i]); err != nil {
			return err
		}
	}
	return nil
}

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
