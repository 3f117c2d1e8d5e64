package deploy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const k8sDir = "k8s"

// manifests is every object of the files kustomization.yaml lists, decoded strictly.
type manifests struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	hpas        []*autoscalingv2.HorizontalPodAutoscaler
	configMaps  []*corev1.ConfigMap
	pvcs        []*corev1.PersistentVolumeClaim
	namespaces  []*corev1.Namespace
}

// kinds maps apiVersion/kind to a new object of its Go type.
var kinds = map[string]func() any{
	"v1/Namespace":                           func() any { return &corev1.Namespace{} },
	"v1/ConfigMap":                           func() any { return &corev1.ConfigMap{} },
	"v1/PersistentVolumeClaim":               func() any { return &corev1.PersistentVolumeClaim{} },
	"v1/Service":                             func() any { return &corev1.Service{} },
	"apps/v1/Deployment":                     func() any { return &appsv1.Deployment{} },
	"autoscaling/v2/HorizontalPodAutoscaler": func() any { return &autoscalingv2.HorizontalPodAutoscaler{} },
}

// decodeStrict decodes one YAML document into v, refusing unknown fields and duplicate keys.
func decodeStrict(doc []byte, v any) error {
	return yaml.UnmarshalStrict(doc, v)
}

// yamlDocs splits a multi-document YAML file, dropping empty documents (comments only).
func yamlDocs(b []byte) ([][]byte, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(b)))
	var docs [][]byte
	for {
		d, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		var probe map[string]any
		if err := yaml.Unmarshal(d, &probe); err != nil {
			return nil, err
		}
		if len(probe) > 0 {
			docs = append(docs, d)
		}
	}
}

type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images,omitempty"`
}

func loadKustomization(tb testing.TB) kustomization {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	var k kustomization
	if err := decodeStrict(b, &k); err != nil {
		tb.Fatalf("kustomization.yaml: %v", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		tb.Fatalf("kustomization.yaml: %s/%s, want kustomize.config.k8s.io/v1beta1 Kustomization", k.APIVersion, k.Kind)
	}
	return k
}

func loadManifests(tb testing.TB) *manifests {
	tb.Helper()
	m := &manifests{}
	for _, file := range loadKustomization(tb).Resources {
		b, err := os.ReadFile(filepath.Join(k8sDir, file))
		if err != nil {
			tb.Fatalf("kustomization.yaml resource: %v", err)
		}
		docs, err := yamlDocs(b)
		if err != nil {
			tb.Fatalf("%s: %v", file, err)
		}
		for i, d := range docs {
			if err := m.add(d); err != nil {
				tb.Fatalf("%s document %d: %v", file, i+1, err)
			}
		}
	}
	return m
}

func (m *manifests) add(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	newObj, ok := kinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return fmt.Errorf("apiVersion %q kind %q: not a kind this test knows (add it to kinds)", tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	if err := decodeStrict(doc, obj); err != nil {
		return fmt.Errorf("%s: %w", tm.Kind, err)
	}
	switch o := obj.(type) {
	case *appsv1.Deployment:
		m.deployments = append(m.deployments, o)
	case *corev1.Service:
		m.services = append(m.services, o)
	case *autoscalingv2.HorizontalPodAutoscaler:
		m.hpas = append(m.hpas, o)
	case *corev1.ConfigMap:
		m.configMaps = append(m.configMaps, o)
	case *corev1.PersistentVolumeClaim:
		m.pvcs = append(m.pvcs, o)
	case *corev1.Namespace:
		m.namespaces = append(m.namespaces, o)
	}
	return nil
}

func (m *manifests) configMap(name string) *corev1.ConfigMap {
	for _, c := range m.configMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// TestStrictDecodeRejects: the strict decoding this file relies on does fail on a misspelt field,
// a duplicate key and a wrong type.
func TestStrictDecodeRejects(t *testing.T) {
	for _, tc := range []struct{ name, doc string }{
		{"unknown field", "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replica: 2\n"},
		{"duplicate key", "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: 2\n  replicas: 3\n"},
		{"wrong type", "apiVersion: apps/v1\nkind: Deployment\nspec:\n  replicas: two\n"},
		{"probe typo", "apiVersion: apps/v1\nkind: Deployment\nspec:\n  template:\n    spec:\n      containers:\n        - name: x\n          readinessProbe:\n            grcp: {port: 1}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := (&manifests{}).add([]byte(tc.doc)); err == nil {
				t.Errorf("decoded without error:\n%s", tc.doc)
			}
		})
	}
}

// TestKustomizationListsEveryManifest: every YAML file in k8s/ is a resource of kustomization.yaml,
// except the Helm values of prometheus-adapter, and every listed file exists.
func TestKustomizationListsEveryManifest(t *testing.T) {
	k := loadKustomization(t)
	files, err := filepath.Glob(filepath.Join(k8sDir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	notResources := map[string]bool{"kustomization.yaml": true, "prometheus-adapter-values.yaml": true}
	for _, f := range files {
		base := filepath.Base(f)
		if !notResources[base] && !slices.Contains(k.Resources, base) {
			t.Errorf("%s is not listed in kustomization.yaml resources", base)
		}
	}
	for _, r := range k.Resources {
		if _, err := os.Stat(filepath.Join(k8sDir, r)); err != nil {
			t.Errorf("kustomization.yaml resource %s: %v", r, err)
		}
	}
	if len(k.Images) != 1 || k.Images[0].Name != "dlmesh" {
		t.Errorf("kustomization.yaml images = %+v, want one entry for the dlmesh image", k.Images)
	}
}

var envRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// TestK8sDeployments checks each dlmesh Deployment: its selector matches its pods, grpc.health.v1
// probes on its gRPC port (readiness on the overall status, liveness on the liveness service),
// args that are flags of `dlmesh CMD` (checked against the binary's --help), every $(VAR) the args
// use defined, Consul as the discovery backend, and a GPU with --backend=cuda on attnd and expertd.
func TestK8sDeployments(t *testing.T) {
	m := loadManifests(t)
	live := livenessService(t)
	seen := map[string]int{}
	for _, d := range m.deployments {
		t.Run(d.Name, func(t *testing.T) {
			if d.Namespace != "dlmesh" {
				t.Errorf("namespace %q, want dlmesh", d.Namespace)
			}
			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			if err != nil {
				t.Fatalf("selector: %v", err)
			}
			if !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Errorf("selector %v does not match the pod labels %v", sel, d.Spec.Template.Labels)
			}
			if d.Name == "consul" {
				return
			}
			if len(d.Spec.Template.Spec.Containers) != 1 {
				t.Fatalf("%d containers, want 1", len(d.Spec.Template.Spec.Containers))
			}
			c := d.Spec.Template.Spec.Containers[0]
			if !strings.HasPrefix(c.Image, "dlmesh") {
				t.Errorf("image %q, want the dlmesh image", c.Image)
			}
			command, flags, err := parseArgs(c.Args)
			if err != nil {
				t.Fatalf("args %q: %v", c.Args, err)
			}
			seen[command]++
			if !slices.Contains([]string{"gateway", "attnd", "expertd"}, command) {
				t.Fatalf("command %q, want gateway, attnd or expertd", command)
			}
			checkFlags(t, d.Name, command, flags)

			// $(VAR) in args must be defined in env or in an envFrom ConfigMap
			defined := map[string]bool{}
			for _, e := range c.Env {
				defined[e.Name] = true
			}
			for _, ef := range c.EnvFrom {
				if ef.ConfigMapRef == nil {
					continue
				}
				cm := m.configMap(ef.ConfigMapRef.Name)
				if cm == nil {
					t.Fatalf("envFrom ConfigMap %q is not among the manifests", ef.ConfigMapRef.Name)
				}
				for k := range cm.Data {
					defined[k] = true
				}
			}
			for _, a := range c.Args {
				for _, ref := range envRef.FindAllStringSubmatch(a, -1) {
					if !defined[ref[1]] {
						t.Errorf("arg %q uses $(%s), which neither env nor envFrom defines", a, ref[1])
					}
				}
			}
			if _, ok := flagValue(flags, "consul"); !ok && !defined["CONSUL_HTTP_ADDR"] {
				t.Error("no --consul and no CONSUL_HTTP_ADDR: the mesh needs Consul for discovery here")
			}

			// probes: grpc.health.v1 on the port --listen names
			listen, ok := flagValue(flags, "listen")
			if !ok {
				t.Fatal("no --listen (the default is loopback, unreachable from other pods)")
			}
			host, port, ok := strings.Cut(listen, ":")
			if !ok || (host != "$(POD_IP)" && host != "0.0.0.0") {
				t.Errorf("--listen=%s: want $(POD_IP):PORT, the address the pod registers in Consul", listen)
			}
			grpcPort, err := strconv.Atoi(port)
			if err != nil {
				t.Fatalf("--listen=%s: port: %v", listen, err)
			}
			if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "grpc" && int(p.ContainerPort) == grpcPort }) {
				t.Errorf("no container port named grpc on %d", grpcPort)
			}
			probe := func(name string, p *corev1.Probe, service string) {
				if p == nil {
					t.Errorf("no %s probe", name)
					return
				}
				if p.GRPC == nil {
					t.Errorf("%s probe is not a grpc probe: %+v", name, p.ProbeHandler)
					return
				}
				if int(p.GRPC.Port) != grpcPort {
					t.Errorf("%s probe port %d, want the gRPC port %d", name, p.GRPC.Port, grpcPort)
				}
				got := ""
				if p.GRPC.Service != nil {
					got = *p.GRPC.Service
				}
				if got != service {
					t.Errorf("%s probe asks health service %q, want %q", name, got, service)
				}
			}
			probe("readiness", c.ReadinessProbe, "")
			probe("liveness", c.LivenessProbe, live)
			if c.StartupProbe != nil {
				probe("startup", c.StartupProbe, live)
			}

			if mv, ok := flagValue(flags, "metrics-listen"); !ok || !strings.HasPrefix(mv, "0.0.0.0:") {
				t.Errorf("--metrics-listen=%q, want 0.0.0.0:PORT (scraped from outside the pod)", mv)
			} else if d.Spec.Template.Annotations["prometheus.io/port"] != strings.TrimPrefix(mv, "0.0.0.0:") {
				t.Errorf("prometheus.io/port annotation %q, want the --metrics-listen port of %s", d.Spec.Template.Annotations["prometheus.io/port"], mv)
			}

			gpu := c.Resources.Limits[corev1.ResourceName("nvidia.com/gpu")]
			backend, _ := flagValue(flags, "backend")
			switch command {
			case "attnd", "expertd":
				if gpu.Value() != 1 {
					t.Errorf("nvidia.com/gpu limit %s, want 1", gpu.String())
				}
				if backend != "cuda" {
					t.Errorf("--backend=%q, want cuda with a GPU", backend)
				}
			default:
				if !gpu.IsZero() {
					t.Errorf("the %s asks for a GPU it does not use", command)
				}
			}

			for _, v := range d.Spec.Template.Spec.Volumes {
				if v.PersistentVolumeClaim != nil && !slices.ContainsFunc(m.pvcs, func(p *corev1.PersistentVolumeClaim) bool { return p.Name == v.PersistentVolumeClaim.ClaimName }) {
					t.Errorf("volume %s: PVC %q is not among the manifests", v.Name, v.PersistentVolumeClaim.ClaimName)
				}
			}
		})
	}
	for _, kind := range []string{"gateway", "attnd", "expertd"} {
		if seen[kind] == 0 {
			t.Errorf("no Deployment runs dlmesh %s", kind)
		}
	}
}

// expertGroups returns the expertd Deployments by --group, with their experts.
func expertGroups(tb testing.TB, m *manifests) (map[string][]int, map[string]*appsv1.Deployment) {
	tb.Helper()
	groups, deps := map[string][]int{}, map[string]*appsv1.Deployment{}
	for _, d := range m.deployments {
		if d.Name == "consul" {
			continue
		}
		command, flags, err := parseArgs(d.Spec.Template.Spec.Containers[0].Args)
		if err != nil || command != "expertd" {
			continue
		}
		g, ok := flagValue(flags, "group")
		if !ok {
			tb.Errorf("%s: expertd without --group", d.Name)
			continue
		}
		ev, _ := flagValue(flags, "experts")
		ids, err := parseExperts(ev)
		if err != nil {
			tb.Errorf("%s: %v", d.Name, err)
			continue
		}
		if _, dup := groups[g]; dup {
			tb.Errorf("group %s has two Deployments: it could not scale on its own", g)
		}
		groups[g], deps[g] = ids, d
	}
	return groups, deps
}

// TestK8sExpertGroups: one Deployment per expert group, the groups partition the model's experts,
// and each group has an HPA on its Deployment scaling on the expert-token metric over its own
// experts, a metric prometheus-adapter-values.yaml defines from dlmesh_expert_tokens_total.
func TestK8sExpertGroups(t *testing.T) {
	m := loadManifests(t)
	groups, deps := expertGroups(t, m)
	if len(groups) < 2 {
		t.Fatalf("%d expert groups, want at least 2", len(groups))
	}
	checkCoverage(t, modelExperts(t), groups)
	external := adapterExternalMetrics(t)
	for g, d := range deps {
		t.Run(g, func(t *testing.T) {
			var hpa *autoscalingv2.HorizontalPodAutoscaler
			for _, h := range m.hpas {
				if h.Spec.ScaleTargetRef.Kind == "Deployment" && h.Spec.ScaleTargetRef.Name == d.Name {
					if hpa != nil {
						t.Fatalf("two HPAs scale %s", d.Name)
					}
					hpa = h
				}
			}
			if hpa == nil {
				t.Fatalf("no HPA scales Deployment %s", d.Name)
			}
			if hpa.Spec.ScaleTargetRef.APIVersion != "apps/v1" {
				t.Errorf("scaleTargetRef apiVersion %q, want apps/v1", hpa.Spec.ScaleTargetRef.APIVersion)
			}
			if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas < 1 || hpa.Spec.MaxReplicas < *hpa.Spec.MinReplicas {
				t.Errorf("replicas min %v max %d: want 1 <= min <= max", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
			}
			if len(hpa.Spec.Metrics) == 0 {
				t.Fatal("HPA has no metrics")
			}
			for _, ms := range hpa.Spec.Metrics {
				var id autoscalingv2.MetricIdentifier
				var target autoscalingv2.MetricTarget
				switch ms.Type {
				case autoscalingv2.ExternalMetricSourceType:
					id, target = ms.External.Metric, ms.External.Target
					if _, ok := external[id.Name]; !ok {
						t.Errorf("External metric %q: prometheus-adapter-values.yaml defines only %v", id.Name, sortedKeys(external))
					}
				case autoscalingv2.PodsMetricSourceType:
					id, target = ms.Pods.Metric, ms.Pods.Target
				default:
					t.Errorf("metric type %s, want External or Pods (the expert-token metric)", ms.Type)
					continue
				}
				if series := external[id.Name]; !strings.Contains(series, "dlmesh_expert_tokens_total") {
					t.Errorf("metric %q comes from %q, want dlmesh_expert_tokens_total", id.Name, series)
				}
				if target.Type != autoscalingv2.AverageValueMetricType || target.AverageValue == nil || target.AverageValue.Sign() <= 0 {
					t.Errorf("target %+v, want a positive AverageValue (tokens/s per replica)", target)
				}
				// the selector must pick exactly this group's experts
				sel, err := metav1.LabelSelectorAsSelector(id.Selector)
				if err != nil {
					t.Fatalf("selector: %v", err)
				}
				for e := range modelExperts(t) {
					in := slices.Contains(groups[g], e)
					if got := sel.Matches(labels.Set{"expert": strconv.Itoa(e)}); got != in {
						t.Errorf("selector %v matches expert %d = %v, want %v (group %s serves %v)", sel, e, got, in, g, groups[g])
					}
				}
			}
		})
	}
}

// adapterExternalMetrics maps each external metric name prometheus-adapter-values.yaml defines
// to its series query.
func adapterExternalMetrics(tb testing.TB) map[string]string {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(k8sDir, "prometheus-adapter-values.yaml"))
	if err != nil {
		tb.Fatal(err)
	}
	type rule struct {
		SeriesQuery string `json:"seriesQuery"`
		Resources   struct {
			Overrides map[string]struct {
				Resource string `json:"resource"`
			} `json:"overrides"`
		} `json:"resources"`
		Name struct {
			Matches string `json:"matches"`
			As      string `json:"as"`
		} `json:"name"`
		MetricsQuery string `json:"metricsQuery"`
	}
	var v struct {
		Prometheus struct {
			URL  string `json:"url"`
			Port int    `json:"port"`
		} `json:"prometheus"`
		Rules struct {
			Default  bool   `json:"default"`
			External []rule `json:"external"`
		} `json:"rules"`
	}
	if err := decodeStrict(b, &v); err != nil {
		tb.Fatalf("prometheus-adapter-values.yaml: %v", err)
	}
	out := map[string]string{}
	for _, r := range v.Rules.External {
		re, err := regexp.Compile(r.Name.Matches)
		if err != nil {
			tb.Fatalf("rule %q: name.matches: %v", r.SeriesQuery, err)
		}
		series := regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*`).FindString(r.SeriesQuery)
		if !re.MatchString(series) {
			tb.Errorf("rule %q: name.matches %q does not match its series %q", r.SeriesQuery, r.Name.Matches, series)
		}
		if r.Resources.Overrides["namespace"].Resource != "namespace" {
			tb.Errorf("rule %q: no namespace override: namespaced HPAs would see no series", r.SeriesQuery)
		}
		for _, want := range []string{"<<.Series>>", "<<.LabelMatchers>>"} {
			if !strings.Contains(r.MetricsQuery, want) {
				tb.Errorf("rule %q: metricsQuery %q lacks %s (the HPA's selector would be ignored)", r.SeriesQuery, r.MetricsQuery, want)
			}
		}
		out[r.Name.As] = series
	}
	return out
}

// TestK8sServices: every Service selects the pods of a Deployment and targets ports they name.
func TestK8sServices(t *testing.T) {
	m := loadManifests(t)
	for _, s := range m.services {
		t.Run(s.Name, func(t *testing.T) {
			var pods *corev1.PodTemplateSpec
			for _, d := range m.deployments {
				if len(s.Spec.Selector) > 0 && labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
					pods = &d.Spec.Template
					break
				}
			}
			if pods == nil {
				t.Fatalf("selector %v selects no Deployment's pods", s.Spec.Selector)
			}
			for _, p := range s.Spec.Ports {
				if p.TargetPort.StrVal == "" {
					continue
				}
				found := false
				for _, c := range pods.Spec.Containers {
					found = found || slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.TargetPort.StrVal })
				}
				if !found {
					t.Errorf("port %s targets %q, which no container names", p.Name, p.TargetPort.StrVal)
				}
			}
		})
	}
}
