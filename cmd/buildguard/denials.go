package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
	"k8s.io/apimachinery/pkg/util/duration"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/records"
)

// tableWidth is the terminal width table output fits.
const tableWidth = 80

// denials lists decision records from the store (or, with "show ID", one
// in full). now is the time --since and ages count from.
func denials(ctx context.Context, args []string, stdout, stderr io.Writer, now time.Time) error {
	fs := flag.NewFlagSet("denials", flag.ContinueOnError)
	var sf storeFlags
	sf.register(fs)
	since := fs.Duration("since", 24*time.Hour, "list decisions of this long ago and later (0: all)")
	var namespace string
	fs.StringVar(&namespace, "namespace", "", "list decisions in this namespace only")
	fs.StringVar(&namespace, "n", "", "short for --namespace")
	rule := fs.String("rule", "", "list decisions that found this rule ID only")
	image := fs.String("image", "", `list decisions with an image reference or digest matching this glob ("*" any run, "?" one character; case-insensitive)`)
	verdicts := fs.String("verdict", "deny,would-deny", "comma-separated verdicts to list: allow, warn, deny, would-deny, or all")
	var output string
	fs.StringVar(&output, "output", "table", "output format: table, json (one object a line) or yaml")
	fs.StringVar(&output, "o", "table", "short for --output")
	limit := fs.Int("limit", 100, "list at most this many decisions, newest first (at most 1000)")
	reviewURL := fs.String("review-url", "", "the review UI's address (serve --review-url): each decision comes with a link to its page, as the table's last column (past its 80 columns) and as \"review\" in json and yaml")
	pos, err := parseInterspersed(fs, args, stderr)
	if err != nil {
		return err
	}
	if output != "table" && output != "json" && output != "yaml" {
		return &usageError{msg: fmt.Sprintf("--output %q: want table, json or yaml", output)}
	}
	review, err := records.ParseReviewURL(*reviewURL)
	if err != nil {
		return &usageError{msg: "--review-url " + err.Error()}
	}
	show := len(pos) > 0 && pos[0] == "show"
	switch {
	case show && len(pos) != 2:
		return &usageError{msg: "denials show takes one decision ID"}
	case !show && len(pos) > 0:
		return &usageError{msg: fmt.Sprintf("unexpected arguments %q", pos)}
	}
	q := evidence.DecisionQuery{Namespace: namespace, Rule: *rule, ImageGlob: *image, Limit: *limit}
	if *since < 0 {
		return &usageError{msg: fmt.Sprintf("--since %v: want a positive duration or 0", *since)}
	}
	if *since > 0 {
		q.Since = now.Add(-*since)
	}
	if *verdicts != "all" {
		for _, v := range splitList(*verdicts) {
			if !slices.Contains([]string{records.VerdictAllow, records.VerdictWarn, records.VerdictDeny, records.VerdictWouldDeny}, v) {
				return &usageError{msg: fmt.Sprintf("--verdict %q: want allow, warn, deny, would-deny or all", v)}
			}
			q.Verdicts = append(q.Verdicts, v)
		}
	}
	st, err := openStoreForReading(ctx, &sf)
	if err != nil {
		return err
	}
	defer st.Close()
	if show {
		d, err := findDecision(ctx, st, pos[1])
		if err != nil {
			return err
		}
		return writeDecisions(stdout, output, []evidence.Decision{d}, true, now, review)
	}
	ds, err := st.Decisions(ctx, q)
	if err != nil {
		return err
	}
	if len(ds) == 0 && output == "table" {
		fmt.Fprintln(stderr, "No decisions found.")
		return nil
	}
	return writeDecisions(stdout, output, ds, false, now, review)
}

// parseInterspersed parses flags given before, between and after the
// positional arguments, as kubectl does, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, error) {
	var pos []string
	for {
		if err := parseFlags(fs, args, stderr); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		args = fs.Args()
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// openStoreForReading opens the store named by the flags; a SQLite file
// must exist (opening would create it).
func openStoreForReading(ctx context.Context, sf *storeFlags) (evidence.Store, error) {
	if sf.sqlite != "" {
		if _, err := os.Stat(sf.sqlite); err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
	}
	st, err := sf.open(ctx)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, &usageError{msg: "name the store: --store-sqlite PATH or --store-postgres-dsn DSN (or $" + postgresDSNEnv + ")"}
	}
	return st, nil
}

// minIDPrefix is the shortest ID prefix "denials show" looks up.
const minIDPrefix = 4

// findDecision returns the decision with this ID or, failing that, the
// only one of the newest 1000 whose ID starts with it (the table shows
// IDs shortened).
func findDecision(ctx context.Context, st evidence.Store, id string) (evidence.Decision, error) {
	d, err := st.Decision(ctx, id)
	if err == nil || !errors.Is(err, evidence.ErrNotFound) || len(id) < minIDPrefix {
		if errors.Is(err, evidence.ErrNotFound) {
			return d, fmt.Errorf("no decision %q", id)
		}
		return d, err
	}
	ds, err := st.Decisions(ctx, evidence.DecisionQuery{Limit: 1000})
	if err != nil {
		return evidence.Decision{}, err
	}
	var match []evidence.Decision
	for _, d := range ds {
		if strings.HasPrefix(d.ID, id) {
			match = append(match, d)
		}
	}
	switch len(match) {
	case 0:
		return evidence.Decision{}, fmt.Errorf("no decision %q", id)
	case 1:
		return match[0], nil
	}
	return evidence.Decision{}, fmt.Errorf("decision ID %q is ambiguous: %d decisions start with it; give more of it", id, len(match))
}

// linkedJSON is a record as json and yaml output show it: with a link to
// its page in the review UI when there is one.
type linkedJSON struct {
	records.DecisionJSON
	Review string `json:"review,omitempty"`
}

func writeDecisions(w io.Writer, output string, ds []evidence.Decision, one bool, now time.Time, review records.ReviewURL) error {
	linked := func(d evidence.Decision) linkedJSON { return linkedJSON{records.ToJSON(d), review.Decision(d.ID)} }
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		if one {
			enc.SetIndent("", "  ")
		}
		for _, d := range ds {
			if err := enc.Encode(linked(d)); err != nil {
				return err
			}
		}
		return nil
	case "yaml":
		var v any = linked(ds[0])
		if !one {
			l := make([]linkedJSON, len(ds))
			for i, d := range ds {
				l[i] = linked(d)
			}
			v = l
		}
		return writeYAML(w, v)
	}
	if one {
		return writeDetail(w, ds[0], now, review)
	}
	return writeTable(w, ds, now, review)
}

// writeYAML writes v as YAML with the keys in the order of its JSON.
func writeYAML(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	var n yaml.Node
	if err := yaml.Unmarshal(b, &n); err != nil {
		return err
	}
	plain(&n)
	enc := yaml.NewEncoder(w)
	enc.SetIndent(2)
	if err := enc.Encode(&n); err != nil {
		return err
	}
	return enc.Close()
}

// plain drops the JSON styles (quoted scalars, flow collections) the
// parse left, so that the encoder writes block YAML and quotes only what
// needs it.
func plain(n *yaml.Node) {
	n.Style = 0
	for _, c := range n.Content {
		plain(c)
	}
}

// writeTable writes one line per decision, fitting tableWidth:
// the ID shortened to 8 characters (denials show accepts it), age,
// verdict, namespace/kind/name and rules, the last two cut to fit. With
// a review URL, each line ends with the decision's link, whole, past
// tableWidth.
func writeTable(w io.Writer, ds []evidence.Decision, now time.Time, review records.ReviewURL) error {
	const gap = 2
	head := []string{"ID", "AGE", "VERDICT", "WORKLOAD", "RULES"}
	rows := make([][]string, len(ds))
	width := make([]int, len(head))
	for i, h := range head {
		width[i] = utf8.RuneCountInString(h)
	}
	for i, d := range ds {
		rows[i] = []string{
			shortID(d.ID), age(now.Sub(d.Time)), d.Verdict,
			d.Namespace + "/" + strings.ToLower(d.Kind) + "/" + d.Name,
			strings.Join(d.Rules, ","),
		}
		for j, c := range rows[i] {
			width[j] = max(width[j], utf8.RuneCountInString(c))
		}
	}
	// The first three columns are short; WORKLOAD and RULES share the rest.
	avail := tableWidth - gap*(len(head)-1) - width[0] - width[1] - width[2]
	if wl, rl := width[3], width[4]; wl+rl > avail {
		// RULES gets up to 2/5, or what WORKLOAD leaves; shortened
		// lists may need less, and WORKLOAD takes that back.
		// A whole first rule ID is worth more than the middle of a name.
		first := 0
		for _, r := range rows {
			first = max(first, utf8.RuneCountInString(fitList(r[4], 0)))
		}
		rl = min(rl, max(avail*2/5, avail-wl, min(first, avail/2)))
		used := utf8.RuneCountInString(head[4])
		for _, r := range rows {
			r[4] = fitList(r[4], rl)
			used = max(used, utf8.RuneCountInString(r[4]))
		}
		width[3] = min(wl, avail-used)
		for _, r := range rows {
			r[3] = cutMiddle(r[3], width[3])
		}
	}
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, gap, ' ', 0)
	for i, cells := range append([][]string{head}, rows...) {
		switch {
		case review.IsZero():
		case i == 0:
			cells = append(cells, "REVIEW")
		default:
			cells = append(cells, review.Decision(ds[i-1].ID))
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// tabwriter pads the last column too; trim it.
	for l := range strings.Lines(b.String()) {
		if _, err := io.WriteString(w, strings.TrimRight(l, " \n")+"\n"); err != nil {
			return err
		}
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// age is a duration as kubectl shows ages: "45s", "12m", "3h4m", "5d".
func age(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	return duration.HumanDuration(d)
}

// cutMiddle shortens s to n runes by replacing its middle with "…", so
// that both the namespace and the end of a generated name stay.
func cutMiddle(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	if n <= 1 {
		return string(r[:n])
	}
	head := (n - 1) / 2
	tail := n - 1 - head
	return string(r[:head]) + "…" + string(r[len(r)-tail:])
}

// fitList shortens a comma-separated list to n runes: as many whole items
// as fit, then "+N" for the rest. With n 0 it returns the shortest form
// that keeps the first item whole.
func fitList(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	if n == 0 {
		first, rest, ok := strings.Cut(s, ",")
		if !ok {
			return first
		}
		return fmt.Sprintf("%s,+%d", first, strings.Count(rest, ",")+1)
	}
	items := strings.Split(s, ",")
	for k := len(items) - 1; k >= 1; k-- {
		out := strings.Join(items[:k], ",") + fmt.Sprintf(",+%d", len(items)-k)
		if utf8.RuneCountInString(out) <= n {
			return out
		}
	}
	more := ""
	if len(items) > 1 {
		more = fmt.Sprintf(",+%d", len(items)-1)
	}
	keep := n - utf8.RuneCountInString(more) - 1
	if keep < 1 {
		return cutMiddle(s, n)
	}
	return string([]rune(items[0])[:keep]) + "…" + more
}

// writeDetail writes one decision for a person: who asked for what, the
// verdict, and per image its digest, findings and their evidence.
func writeDetail(w io.Writer, d evidence.Decision, now time.Time, review records.ReviewURL) error {
	var b bytes.Buffer
	field := func(k, v string) { fmt.Fprintf(&b, "%-11s %s\n", k+":", v) }
	field("ID", d.ID)
	if link := review.Decision(d.ID); link != "" {
		field("Review", link)
	}
	field("Time", fmt.Sprintf("%s (%s ago)", d.Time.UTC().Format(time.RFC3339), age(now.Sub(d.Time))))
	field("Request", fmt.Sprintf("%s %s %s in namespace %s", d.Operation, d.Kind, orDash(d.Name), d.Namespace))
	user := orDash(d.User)
	if len(d.Groups) > 0 {
		user += " (" + strings.Join(d.Groups, ", ") + ")"
	}
	field("User", user)
	field("Verdict", fmt.Sprintf("%s (%s mode)", d.Verdict, d.Mode))
	field("Rules", orDash(strings.Join(d.Rules, ", ")))
	field("Exceptions", orDash(strings.Join(d.Exceptions, ", ")))
	images, err := records.ParseImages(d.Images)
	if err != nil {
		fmt.Fprintf(&b, "Images:     (unreadable: %v)\n%s\n", err, d.Images)
		_, err := w.Write(b.Bytes())
		return err
	}
	for _, im := range images {
		b.WriteString("\n")
		if im.Scope == records.ScopeWorkload {
			b.WriteString("Workload\n")
			if im.ChangeID != "" {
				fmt.Fprintf(&b, "  change ID: %s\n", im.ChangeID)
			}
		} else {
			kind := im.ContainerKind
			if kind == "" {
				kind = "container"
			}
			sub := func(k, v string) { fmt.Fprintf(&b, "  %-10s %s\n", k+":", v) }
			fmt.Fprintf(&b, "Image %s\n", im.Image)
			sub(kind, orDash(im.Container))
			sub("digest", orDash(im.Digest))
			sub("verdict", im.Verdict)
			if e := im.Exception; e != nil {
				fmt.Fprintf(&b, "  %-10s %s (%s), expires %s", "exception:", e.Name, e.Reason, e.Expires)
				if e.ApprovedBy != "" {
					fmt.Fprintf(&b, ", approved by %s", e.ApprovedBy)
				}
				b.WriteString("\n")
			}
		}
		for _, f := range im.Findings {
			fmt.Fprintf(&b, "  - [%s] %s (%s, %s)\n", f.Rule, f.Message, f.Severity, f.Action)
			if f.Policy != "" {
				fmt.Fprintf(&b, "      policy: %s\n", f.Policy)
			}
			keys := make([]string, 0, len(f.Evidence))
			for k := range f.Evidence {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				fmt.Fprintf(&b, "      %s: %s\n", k, records.EvidenceString(f.Evidence[k]))
			}
		}
	}
	_, err = w.Write(b.Bytes())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
