package deploy

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
)

// issueMetrics are the metric names issue 14 asks the services to export (the metrics part of
// that issue implements them), with their types; the dashboard may query these and the names the
// services export today (existingMetrics).
var issueMetrics = map[string]string{
	"dlmesh_time_to_first_token_seconds": "histogram",
	"dlmesh_e2e_request_latency_seconds": "histogram",
	"dlmesh_denoising_step_seconds":      "histogram",
	"dlmesh_tokens_per_forward":          "histogram",
	"dlmesh_prompt_tokens_total":         "counter",
	"dlmesh_generation_tokens_total":     "counter",
	"dlmesh_request_success_total":       "counter",
	"dlmesh_request_failure_total":       "counter",
	"dlmesh_num_requests_running":        "gauge",
	"dlmesh_num_requests_waiting":        "gauge",
	"dlmesh_expert_tokens_total":         "counter",
}

// existingMetrics are the dlmesh_ names the main module's metrics sources define now.
func existingMetrics(tb testing.TB) map[string]bool {
	tb.Helper()
	out := map[string]bool{}
	re := regexp.MustCompile(`"(dlmesh_[a-z0-9_]+)"`)
	for _, f := range []string{"services/metrics.go", "cmd/dlmesh/metrics.go"} {
		b, err := os.ReadFile(filepath.Join(repoRoot, f))
		if err != nil {
			tb.Fatal(err)
		}
		for _, m := range re.FindAllSubmatch(b, -1) {
			out[string(m[1])] = true
		}
	}
	if len(out) == 0 {
		tb.Fatal("no dlmesh_ metric names found in the metrics sources")
	}
	return out
}

// dashboard is the subset of Grafana's dashboard model deploy/grafana/dlmesh.json uses, decoded
// with unknown fields refused, so a misspelt key fails here rather than vanishing in Grafana.
type dashboard struct {
	UID           string                    `json:"uid"`
	Title         string                    `json:"title"`
	Tags          []string                  `json:"tags"`
	Timezone      string                    `json:"timezone"`
	SchemaVersion int                       `json:"schemaVersion"`
	Version       int                       `json:"version"`
	Editable      bool                      `json:"editable"`
	Refresh       string                    `json:"refresh"`
	Time          struct{ From, To string } `json:"time"`
	Annotations   struct {
		List []json.RawMessage `json:"list"`
	} `json:"annotations"`
	Templating struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Label      string          `json:"label"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasourceRef  `json:"datasource"`
			Definition string          `json:"definition"`
			IncludeAll bool            `json:"includeAll"`
			AllValue   string          `json:"allValue"`
			Multi      bool            `json:"multi"`
			Current    json.RawMessage `json:"current"`
			Hide       int             `json:"hide"`
			Refresh    int             `json:"refresh"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	Type            string                   `json:"type"`
	Title           string                   `json:"title"`
	ID              int                      `json:"id"`
	Description     string                   `json:"description"`
	Datasource      *datasourceRef           `json:"datasource"`
	GridPos         struct{ H, W, X, Y int } `json:"gridPos"`
	FieldConfig     json.RawMessage          `json:"fieldConfig"`
	Options         json.RawMessage          `json:"options"`
	Transformations []json.RawMessage        `json:"transformations"`
	Collapsed       bool                     `json:"collapsed"`
	Panels          []panel                  `json:"panels"`
	Targets         []struct {
		RefID        string         `json:"refId"`
		Datasource   *datasourceRef `json:"datasource"`
		Expr         string         `json:"expr"`
		LegendFormat string         `json:"legendFormat"`
		Format       string         `json:"format"`
		Instant      bool           `json:"instant"`
	} `json:"targets"`
}

func loadDashboard(tb testing.TB) dashboard {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("grafana", "dlmesh.json"))
	if err != nil {
		tb.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var d dashboard
	if err := dec.Decode(&d); err != nil {
		tb.Fatalf("grafana/dlmesh.json: %v", err)
	}
	return d
}

var grafanaVar = regexp.MustCompile(`\$\{?(\w+)\}?`)

// promQL replaces Grafana's variables by values PromQL accepts: intervals by 5m, others by a regex.
func promQL(expr string) string {
	return grafanaVar.ReplaceAllStringFunc(expr, func(v string) string {
		if strings.HasPrefix(strings.Trim(v, "${}"), "__") {
			return "5m"
		}
		return ".*"
	})
}

// TestDashboard: every query of grafana/dlmesh.json parses as PromQL and selects only metrics
// the services export or issue 14 names (histogram series through _bucket/_sum/_count of a
// histogram), every histogram_quantile aggregates buckets by le, every issue metric is shown,
// and every panel uses the dashboard's data source variable.
func TestDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard without uid or title")
	}
	vars := map[string]string{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" {
		t.Errorf("no datasource variable (templating %v)", vars)
	}
	existing := existingMetrics(t)
	allowed := func(name string) bool {
		if existing[name] || issueMetrics[name] != "" {
			return true
		}
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suf); ok && issueMetrics[base] == "histogram" {
				return true
			}
		}
		return false
	}
	p := parser.NewParser(parser.Options{})
	queried := map[string]bool{}
	ids := map[int]bool{}
	var walk func(ps []panel)
	walk = func(ps []panel) {
		for _, pn := range ps {
			if ids[pn.ID] {
				t.Errorf("panel id %d twice", pn.ID)
			}
			ids[pn.ID] = true
			if pn.GridPos.W <= 0 || pn.GridPos.X+pn.GridPos.W > 24 || pn.GridPos.H <= 0 {
				t.Errorf("panel %q: gridPos %+v outside the 24-column grid", pn.Title, pn.GridPos)
			}
			if pn.Type == "row" {
				walk(pn.Panels)
				continue
			}
			if !slices.Contains([]string{"timeseries", "heatmap", "table", "stat", "gauge", "bargauge"}, pn.Type) {
				t.Errorf("panel %q: type %q", pn.Title, pn.Type)
			}
			if pn.Datasource == nil || pn.Datasource.UID != "${datasource}" {
				t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", pn.Title, pn.Datasource)
			}
			if len(pn.Targets) == 0 {
				t.Errorf("panel %q: no queries", pn.Title)
			}
			for _, tg := range pn.Targets {
				expr, err := p.ParseExpr(promQL(tg.Expr))
				if err != nil {
					t.Errorf("panel %q query %s %q: %v", pn.Title, tg.RefID, tg.Expr, err)
					continue
				}
				parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
					switch n := n.(type) {
					case *parser.VectorSelector:
						if !allowed(n.Name) {
							t.Errorf("panel %q queries %q: not a metric the services export or issue 14 names", pn.Title, n.Name)
						}
						base := n.Name
						for _, suf := range []string{"_bucket", "_sum", "_count"} {
							if b, ok := strings.CutSuffix(base, suf); ok && issueMetrics[b] == "histogram" {
								base = b
							}
						}
						queried[base] = true
					case *parser.Call:
						if n.Func.Name == "histogram_quantile" {
							checkQuantile(t, pn.Title, n)
						}
					}
					return nil
				})
			}
		}
	}
	walk(d.Panels)
	for name := range issueMetrics {
		if !queried[name] {
			t.Errorf("no panel shows %s", name)
		}
	}
	for _, name := range []string{"dlmesh_kv_tokens", "dlmesh_kv_capacity_tokens"} {
		if !queried[name] {
			t.Errorf("no panel shows %s (KV usage)", name)
		}
	}
}

// checkQuantile fails t unless histogram_quantile's argument aggregates _bucket series by le.
func checkQuantile(t *testing.T, title string, c *parser.Call) {
	t.Helper()
	agg, ok := c.Args[1].(*parser.AggregateExpr)
	if !ok || agg.Without || !slices.Contains(agg.Grouping, "le") {
		t.Errorf("panel %q: histogram_quantile over %s: want sum by (le, …) (rate(…_bucket[…]))", title, c.Args[1])
		return
	}
	buckets := false
	parser.Inspect(agg, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok && strings.HasSuffix(vs.Name, "_bucket") {
			buckets = true
		}
		return nil
	})
	if !buckets {
		t.Errorf("panel %q: histogram_quantile over %s: no _bucket series", title, agg)
	}
}
