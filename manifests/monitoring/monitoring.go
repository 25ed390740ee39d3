// Package monitoring holds buildguard's Grafana dashboard and Prometheus
// alerting rules (the files beside it, applied with kustomize or the Helm
// chart) and reads the PromQL in them, so that tests can hold every
// query to the metrics a running buildguard serves.
package monitoring

import (
	"embed"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// Files of the dashboard and the rules.
const (
	DashboardFile = "buildguard-dashboard.json"
	RulesFile     = "buildguard-rules.yaml"
)

//go:embed buildguard-dashboard.json buildguard-rules.yaml
var files embed.FS

// Query is one PromQL expression of the dashboard or the rules.
type Query struct {
	// Where names it: `panel "Reviews by verdict"` or `alert
	// BuildguardWebhookErrors`.
	Where string
	Expr  string
}

// grafanaVars are the Grafana variables the dashboard's queries use,
// with a value PromQL parses in their place.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__range", "1h", "$__interval", "1m")

// Dashboard reads the queries of the dashboard's panels, rows' panels
// included, with Grafana's variables replaced.
func Dashboard() ([]Query, error) {
	b, err := files.ReadFile(DashboardFile)
	if err != nil {
		return nil, err
	}
	type panel struct {
		Title   string  `json:"title"`
		Type    string  `json:"type"`
		Panels  []panel `json:"panels"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	}
	var d struct {
		Panels []panel `json:"panels"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, fmt.Errorf("%s: %w", DashboardFile, err)
	}
	var out []Query
	var walk func([]panel) error
	walk = func(ps []panel) error {
		for _, p := range ps {
			if p.Type != "row" && len(p.Targets) == 0 {
				return fmt.Errorf("%s: panel %q has no query", DashboardFile, p.Title)
			}
			for _, t := range p.Targets {
				out = append(out, Query{Where: fmt.Sprintf("panel %q", p.Title), Expr: grafanaVars.Replace(t.Expr)})
			}
			if err := walk(p.Panels); err != nil {
				return err
			}
		}
		return nil
	}
	return out, walk(d.Panels)
}

// Rules validates the rule file as promtool check rules does (strict
// YAML, every expression and template parsed) and returns its
// expressions.
func Rules() ([]Query, error) {
	b, err := files.ReadFile(RulesFile)
	if err != nil {
		return nil, err
	}
	return ParseRules(RulesFile, b)
}

// ParseRules validates the rule groups of content, read from name, as
// promtool check rules does, and returns their expressions.
func ParseRules(name string, content []byte) ([]Query, error) {
	groups, errs := rulefmt.Parse(content, false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		var msgs []string
		for _, e := range errs {
			msgs = append(msgs, e.Error())
		}
		return nil, fmt.Errorf("%s: %s", name, strings.Join(msgs, "; "))
	}
	var out []Query
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			where := "alert " + r.Alert
			if r.Record != "" {
				where = "record " + r.Record
			}
			out = append(out, Query{Where: where, Expr: r.Expr})
		}
	}
	return out, nil
}

// Used returns the metric names the shipped dashboard and alert rules
// query, and where each is used.
func Used() (map[string][]string, error) {
	d, err := Dashboard()
	if err != nil {
		return nil, err
	}
	r, err := Rules()
	if err != nil {
		return nil, err
	}
	return Metrics(append(d, r...))
}

// Metrics returns the metric names each query selects, and where each
// is used.
func Metrics(qs []Query) (map[string][]string, error) {
	p := parser.NewParser(parser.Options{})
	out := map[string][]string{}
	for _, q := range qs {
		expr, err := p.ParseExpr(q.Expr)
		if err != nil {
			return nil, fmt.Errorf("%s: %q: %w", q.Where, q.Expr, err)
		}
		found := false
		parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
			if vs, ok := n.(*parser.VectorSelector); ok {
				name := vs.Name
				if name == "" {
					for _, m := range vs.LabelMatchers {
						if m.Name == model.MetricNameLabel {
							name = m.Value
						}
					}
				}
				if !slices.Contains(out[name], q.Where) {
					out[name] = append(out[name], q.Where)
				}
				found = true
			}
			return nil
		})
		if !found {
			return nil, fmt.Errorf("%s: %q selects no metric", q.Where, q.Expr)
		}
	}
	return out, nil
}

// Missing returns, of the metrics named in used whose name starts with
// prefix, those that the Prometheus text exposition in (a /metrics
// response) does not have, with where they are used. A histogram's
// _bucket, _sum and _count series are its family's.
func Missing(used map[string][]string, prefix string, in io.Reader) ([]string, error) {
	tp := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := tp.TextToMetricFamilies(in)
	if err != nil {
		return nil, fmt.Errorf("parsing /metrics: %w", err)
	}
	var missing []string
	for name, where := range used {
		if !strings.HasPrefix(name, prefix) || served(fams, name) {
			continue
		}
		missing = append(missing, fmt.Sprintf("%s (used by %s)", name, strings.Join(where, ", ")))
	}
	slices.Sort(missing)
	return missing, nil
}

func served(fams map[string]*dto.MetricFamily, name string) bool {
	if f, ok := fams[name]; ok && len(f.GetMetric()) > 0 {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if f, found := fams[base]; ok && found && f.GetType() == dto.MetricType_HISTOGRAM && len(f.GetMetric()) > 0 {
			return true
		}
	}
	return false
}
