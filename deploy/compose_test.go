package deploy

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"sigs.k8s.io/yaml"
)

// loadCompose loads a compose file the way `docker compose` does (compose-go: interpolation,
// the compose-spec JSON schema, which refuses unknown keys, and the consistency checks) with an
// empty environment and the given profiles.
func loadCompose(tb testing.TB, path string, profiles ...string) (*types.Project, error) {
	tb.Helper()
	opts, err := cli.NewProjectOptions([]string{path},
		cli.WithWorkingDirectory(filepath.Dir(path)),
		cli.WithEnv(nil),
		cli.WithProfiles(profiles),
	)
	if err != nil {
		return nil, err
	}
	return opts.LoadProject(context.Background())
}

// TestComposeRejectsUnknownKeys: the loader this file relies on fails on a misspelt key.
func TestComposeRejectsUnknownKeys(t *testing.T) {
	for _, tc := range []struct{ name, doc string }{
		{"service key", "services:\n  a:\n    image: x\n    comand: [\"up\"]\n"},
		{"healthcheck key", "services:\n  a:\n    image: x\n    healthcheck:\n      tets: [\"CMD\", \"true\"]\n"},
		{"depends on unknown service", "services:\n  a:\n    image: x\n    depends_on: [b]\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "compose.yaml")
			if err := os.WriteFile(p, []byte(tc.doc), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := loadCompose(t, p); err == nil {
				t.Errorf("loaded without error:\n%s", tc.doc)
			}
		})
	}
}

// TestCompose checks deploy/compose.yaml: the service set, each dlmesh service's command against
// the binary's flags, listen addresses other containers reach, Consul discovery and tracing to
// Jaeger, two expert groups of two replicas covering the model's experts, and a Prometheus
// scrape target for every --metrics-listen.
func TestCompose(t *testing.T) {
	p, err := loadCompose(t, "compose.yaml")
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	want := []string{"attnd", "consul", "expertd-g0-a", "expertd-g0-b", "expertd-g1-a", "expertd-g1-b", "gateway", "jaeger", "prometheus"}
	got := p.ServiceNames()
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("services %v, want %v", got, want)
	}
	if d := p.DisabledServiceNames(); !slices.Equal(d, []string{"grafana"}) {
		t.Errorf("services outside the default profile %v, want [grafana]", d)
	}
	if p.Services["consul"].HealthCheck == nil || p.Services["prometheus"].HealthCheck == nil {
		t.Error("consul and prometheus need healthchecks (the mesh waits for consul's)")
	}

	targets := scrapeTargets(t)
	groups := map[string][]int{}
	replicas := map[string]int{}
	kinds := map[string]int{}
	for _, name := range p.ServiceNames() {
		s := p.Services[name]
		if !strings.HasPrefix(s.Image, "dlmesh") {
			continue
		}
		t.Run(name, func(t *testing.T) {
			if s.Build == nil || s.Build.Dockerfile != "deploy/Dockerfile" {
				t.Errorf("build %+v, want deploy/Dockerfile from the repository root", s.Build)
			} else if root, _ := filepath.Abs(repoRoot); s.Build.Context != root {
				t.Errorf("build context %s, want the repository root %s", s.Build.Context, root)
			}
			command, flags, err := parseArgs(s.Command)
			if err != nil {
				t.Fatalf("command %q: %v", s.Command, err)
			}
			kinds[command]++
			checkFlags(t, name, command, flags)
			listen, _ := flagValue(flags, "listen")
			if host, _, _ := strings.Cut(listen, ":"); host != name {
				t.Errorf("--listen=%q: want %s:PORT, the service's own name, so the address it registers in Consul is reachable", listen, name)
			}
			// healthcheck: `dlmesh health --addr <its --listen>` through the image's entrypoint
			if hc := s.HealthCheck; hc == nil || len(hc.Test) < 2 || hc.Test[0] != "CMD" || hc.Test[1] != imageEntrypoint(t) {
				t.Errorf("healthcheck %+v, want [CMD %s health --addr %s]", s.HealthCheck, imageEntrypoint(t), listen)
			} else if hcmd, hflags, err := parseArgs(hc.Test[2:]); err != nil || hcmd != "health" {
				t.Errorf("healthcheck %q: want dlmesh health …: %v", hc.Test, err)
			} else {
				checkFlags(t, name+" healthcheck", "health", hflags)
				if a, _ := flagValue(hflags, "addr"); a != listen {
					t.Errorf("healthcheck asks %s, the service listens on %s", a, listen)
				}
			}
			env := func(k string) string {
				if v := s.Environment[k]; v != nil {
					return *v
				}
				return ""
			}
			if _, ok := flagValue(flags, "consul"); !ok && env("CONSUL_HTTP_ADDR") != "consul:8500" {
				t.Errorf("CONSUL_HTTP_ADDR=%q and no --consul: want the consul service", env("CONSUL_HTTP_ADDR"))
			}
			if dep, ok := s.DependsOn["consul"]; !ok || dep.Condition != types.ServiceConditionHealthy {
				t.Errorf("depends_on consul %+v, want condition service_healthy", dep)
			}
			if env("OTEL_EXPORTER_OTLP_ENDPOINT") != "jaeger:4317" {
				t.Errorf("OTEL_EXPORTER_OTLP_ENDPOINT=%q, want jaeger:4317", env("OTEL_EXPORTER_OTLP_ENDPOINT"))
			}
			ml, ok := flagValue(flags, "metrics-listen")
			if !ok {
				t.Fatal("no --metrics-listen")
			}
			_, port, _ := strings.Cut(ml, ":")
			if !targets[name+":"+port] {
				t.Errorf("prometheus.yml does not scrape %s:%s", name, port)
			}
			if command == "expertd" {
				g, _ := flagValue(flags, "group")
				ev, _ := flagValue(flags, "experts")
				ids, err := parseExperts(ev)
				if err != nil {
					t.Fatal(err)
				}
				if prev, seen := groups[g]; seen && !slices.Equal(prev, ids) {
					t.Errorf("group %s: experts %v here, %v in another replica", g, ids, prev)
				}
				groups[g] = ids
				replicas[g]++
			}
		})
	}
	if kinds["gateway"] != 1 || kinds["attnd"] != 1 {
		t.Errorf("dlmesh commands %v, want one gateway and one attnd", kinds)
	}
	if len(groups) != 2 {
		t.Errorf("%d expert groups, want 2", len(groups))
	}
	for g, n := range replicas {
		if n != 2 {
			t.Errorf("group %s: %d replicas, want 2", g, n)
		}
	}
	checkCoverage(t, modelExperts(t), groups)
	jaeger := p.Services["jaeger"]
	if !slices.ContainsFunc(jaeger.Ports, func(pc types.ServicePortConfig) bool { return pc.Target == 4317 }) {
		t.Error("jaeger does not expose OTLP gRPC 4317")
	}
}

// TestComposeGrafanaProfile: --profile grafana adds Grafana with the provisioned data source and
// the dashboard mounted where the provider looks.
func TestComposeGrafanaProfile(t *testing.T) {
	p, err := loadCompose(t, "compose.yaml", "grafana")
	if err != nil {
		t.Fatalf("compose.yaml --profile grafana: %v", err)
	}
	g, ok := p.Services["grafana"]
	if !ok {
		t.Fatal("no grafana service with --profile grafana")
	}
	mounts := map[string]string{}
	for _, v := range g.Volumes {
		rel, err := filepath.Rel(mustAbs(t, "."), v.Source)
		if err != nil {
			t.Fatal(err)
		}
		mounts[v.Target] = rel
		if _, err := os.Stat(v.Source); err != nil {
			t.Errorf("volume %s: %v", v.Target, err)
		}
	}
	if mounts["/etc/grafana/provisioning"] != filepath.Join("grafana", "provisioning") {
		t.Errorf("provisioning mounted from %q", mounts["/etc/grafana/provisioning"])
	}
	var prov struct {
		APIVersion int `json:"apiVersion"`
		Providers  []struct {
			Name            string `json:"name"`
			Folder          string `json:"folder"`
			Type            string `json:"type"`
			DisableDeletion bool   `json:"disableDeletion"`
			Options         struct {
				Path string `json:"path"`
			} `json:"options"`
		} `json:"providers"`
	}
	b, err := os.ReadFile(filepath.Join("grafana", "provisioning", "dashboards", "dlmesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &prov); err != nil || len(prov.Providers) != 1 {
		t.Fatalf("dashboards provisioning: %v (%d providers)", err, len(prov.Providers))
	}
	dir := prov.Providers[0].Options.Path
	if mounts[dir+"/dlmesh.json"] != filepath.Join("grafana", "dlmesh.json") {
		t.Errorf("the provider reads %s, but grafana/dlmesh.json is mounted at %v", dir, mounts)
	}
	var ds struct {
		APIVersion  int `json:"apiVersion"`
		Datasources []struct {
			Name      string `json:"name"`
			UID       string `json:"uid"`
			Type      string `json:"type"`
			Access    string `json:"access"`
			URL       string `json:"url"`
			IsDefault bool   `json:"isDefault"`
		} `json:"datasources"`
	}
	if b, err = os.ReadFile(filepath.Join("grafana", "provisioning", "datasources", "prometheus.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := yaml.UnmarshalStrict(b, &ds); err != nil || len(ds.Datasources) != 1 {
		t.Fatalf("datasources provisioning: %v", err)
	}
	if d := ds.Datasources[0]; d.Type != "prometheus" || d.URL != "http://prometheus:9090" {
		t.Errorf("data source %+v, want the compose prometheus", d)
	}
}

func mustAbs(tb testing.TB, p string) string {
	tb.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		tb.Fatal(err)
	}
	return a
}

// scrapeTargets decodes prometheus/prometheus.yml (strictly, the subset of Prometheus's schema
// it uses) and returns its static targets.
func scrapeTargets(tb testing.TB) map[string]bool {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join("prometheus", "prometheus.yml"))
	if err != nil {
		tb.Fatal(err)
	}
	var c struct {
		Global struct {
			ScrapeInterval     string `json:"scrape_interval"`
			EvaluationInterval string `json:"evaluation_interval"`
		} `json:"global"`
		ScrapeConfigs []struct {
			JobName       string `json:"job_name"`
			StaticConfigs []struct {
				Targets []string          `json:"targets"`
				Labels  map[string]string `json:"labels"`
			} `json:"static_configs"`
		} `json:"scrape_configs"`
	}
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		tb.Fatalf("prometheus.yml: %v", err)
	}
	out := map[string]bool{}
	jobs := map[string]bool{}
	for _, sc := range c.ScrapeConfigs {
		if jobs[sc.JobName] {
			tb.Errorf("prometheus.yml: job %s twice", sc.JobName)
		}
		jobs[sc.JobName] = true
		for _, st := range sc.StaticConfigs {
			for _, tg := range st.Targets {
				out[tg] = true
			}
		}
	}
	return out
}

// imageEntrypoint is the ENTRYPOINT binary of deploy/Dockerfile's runtime stage.
func imageEntrypoint(tb testing.TB) string {
	tb.Helper()
	_, stages := parseDockerfile(tb)
	ep := stages[len(stages)-1].find("entrypoint")
	if len(ep) != 1 || len(ep[0].args) == 0 {
		tb.Fatalf("Dockerfile: ENTRYPOINT %+v", ep)
	}
	return ep[0].args[0]
}
