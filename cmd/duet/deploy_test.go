package main

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// listenSettings are the settings that open a port in a duet container,
// and the component that opens it (empty: always).
var listenSettings = []struct{ flag, component string }{
	{"http-addr", ""},
	{"cwmp-addr", "cwmp"},
	{"ws-addr", "usp-ws"},
	{"mqtt-port", "usp-mqtt"},   // embedded broker only
	{"stomp-port", "usp-stomp"}, // embedded broker only
	{"nats-port", ""},           // embedded NATS only
}

// portOf is the port a listen setting's value names ("host:port" or a port).
func portOf(v string) int {
	if i := strings.LastIndex(v, ":"); i >= 0 {
		v = v[i+1:]
	}
	p, _ := strconv.Atoi(v)
	return p
}

// duetContainer is what a manifest says about one duet process.
type duetContainer struct {
	where string
	env   map[string]string // DUET_* variables set
	file  map[string]string // settings file keys (a ConfigMap's duet.yaml)
	args  []string
	ports []int // container ports opened (published or declared)
}

// settingValue resolves a setting as duet would from the manifest: the
// environment over the settings file over the default.
func (c duetContainer) settingValue(s *settings, flag string) string {
	st := s.byFlag[flag]
	if v, ok := c.env[st.env]; ok {
		return v
	}
	if v, ok := c.file[flag]; ok {
		return v
	}
	return st.def
}

func (c duetContainer) components(t *testing.T, s *settings) map[string]bool {
	only := ""
	for i, a := range c.args {
		if (a == "--only" || a == "-only") && i+1 < len(c.args) {
			only = c.args[i+1]
		} else if v, ok := strings.CutPrefix(a, "--only="); ok {
			only = v
		}
	}
	if only == "" {
		only = c.settingValue(s, "only")
	}
	probe := newSettings()
	probe.byFlag["only"].value = only
	comps, err := probe.components()
	if err != nil {
		t.Errorf("%s: %v", c.where, err)
	}
	return comps
}

// check holds a duet container to the settings: every variable and key is
// a setting, the settings are valid, every declared port is opened by a
// setting of a component it runs, and every listener it runs is declared.
func (c duetContainer) check(t *testing.T) {
	s := newSettings()
	for k := range c.env {
		name := strings.TrimSuffix(k, "_FILE")
		found := k == "DUET_CONFIG"
		for _, st := range s.list {
			if st.env == k || (st.secret && st.env == name) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: %s is not a setting", c.where, k)
		}
	}
	comps := c.components(t, s)
	// The settings are valid as duet would read them (files replaced by a
	// value: they are secrets mounted at run time).
	env := map[string]string{}
	for k, v := range c.env {
		if strings.HasSuffix(k, "_FILE") {
			env[strings.TrimSuffix(k, "_FILE")] = secretPlaceholder(strings.TrimSuffix(k, "_FILE"))
			continue
		}
		env[k] = v
	}
	var yamlFile strings.Builder
	for k, v := range c.file {
		if f, ok := strings.CutSuffix(k, "-file"); ok {
			k, v = f, secretPlaceholder(s.byFlag[f].env)
		}
		fmt.Fprintf(&yamlFile, "%s: %q\n", k, v)
	}
	delete(env, "DUET_CONFIG")
	args := []string{}
	if len(c.file) > 0 {
		p := filepath.Join(t.TempDir(), "duet.yaml")
		if err := os.WriteFile(p, []byte(yamlFile.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", p)
	}
	for i, a := range c.args {
		if a == "--only" && i+1 < len(c.args) {
			args = append(args, a, c.args[i+1])
		}
	}
	ps := newSettings()
	if err := ps.parse("serve", args, envOf(env), io.Discard); err != nil {
		t.Errorf("%s: %v", c.where, err)
		return
	}
	if _, err := ps.checkServe(); err != nil {
		t.Errorf("%s: settings refused: %v", c.where, err)
	}
	// Ports.
	opened := map[int]string{}
	for _, l := range listenSettings {
		if l.component != "" && !comps[l.component] {
			continue
		}
		if l.flag == "nats-port" && c.settingValue(s, "nats-url") != "" {
			continue
		}
		if l.flag == "mqtt-port" && c.settingValue(s, "mqtt-url") != "" {
			continue
		}
		if l.flag == "stomp-port" && c.settingValue(s, "stomp-addr") != "" {
			continue
		}
		opened[portOf(c.settingValue(s, l.flag))] = l.flag
	}
	for _, p := range c.ports {
		if _, ok := opened[p]; !ok {
			t.Errorf("%s: port %d is declared, but no setting of the components it runs opens it (opened: %v)", c.where, p, opened)
		}
	}
	for p, flag := range opened {
		if flag == "nats-port" {
			continue // embedded NATS serves this process only
		}
		if !slices.Contains(c.ports, p) {
			t.Errorf("%s: %s opens port %d, which is not declared", c.where, flag, p)
		}
	}
}

func secretPlaceholder(env string) string {
	if env == "DUET_CREDENTIALS_KEY" || env == "DUET_BUS_SEAL_KEY" {
		return "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" // 32 zero bytes
	}
	return "placeholder-secret-value-long-enough"
}

func yamlDocs(t *testing.T, path string) []map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var docs []map[string]any
	for {
		var d map[string]any
		if err := dec.Decode(&d); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	return docs
}

// m walks nested maps: m(doc, "spec", "template") or nil.
func m(v any, keys ...string) any {
	for _, k := range keys {
		mm, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = mm[k]
	}
	return v
}

func list(v any) []any { l, _ := v.([]any); return l }

func str(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case int:
		return strconv.Itoa(x)
	}
	return ""
}

// TestDeployManifests parses every compose and Kubernetes file, and holds
// each duet container to the real settings and ports.
func TestDeployManifests(t *testing.T) {
	// Compose.
	compose := yamlDocs(t, "../../deploy/compose/compose.yaml")[0]
	svc := m(compose, "services", "duet")
	if svc == nil {
		t.Fatal("compose.yaml has no duet service")
	}
	c := duetContainer{where: "compose duet", env: map[string]string{}}
	for k, v := range m(svc, "environment").(map[string]any) {
		c.env[k] = str(v)
	}
	for _, p := range list(m(svc, "ports")) {
		parts := strings.Split(str(p), ":")
		n, err := strconv.Atoi(parts[len(parts)-1])
		if err != nil {
			t.Errorf("compose: port %v", p)
		}
		c.ports = append(c.ports, n)
	}
	c.check(t)
	for _, s := range list(m(svc, "secrets")) {
		if m(compose, "secrets", str(s)) == nil {
			t.Errorf("compose: duet uses secret %v, which is not defined", s)
		}
	}
	// Every _FILE variable points at a mounted secret.
	for k, v := range c.env {
		if strings.HasSuffix(k, "_FILE") && !slices.Contains(toStrings(list(m(svc, "secrets"))), strings.TrimPrefix(v, "/run/secrets/")) {
			t.Errorf("compose: %s=%s is not a mounted secret", k, v)
		}
	}

	// systemd: every variable of duet.env, set or commented out, is a setting.
	envFile, err := os.ReadFile("../../deploy/systemd/duet.env")
	if err != nil {
		t.Fatal(err)
	}
	sd := duetContainer{where: "systemd duet.env", env: map[string]string{}}
	for _, m := range regexp.MustCompile(`(?m)^#?(DUET_[A-Z0-9_]+)=(.*)$`).FindAllStringSubmatch(string(envFile), -1) {
		sd.env[m[1]] = m[2]
	}
	if len(sd.env) < 10 {
		t.Fatalf("duet.env: only %d variables found", len(sd.env))
	}
	for k := range sd.env {
		if k == "DUET_CONFIG" {
			continue
		}
		name := strings.TrimSuffix(k, "_FILE")
		found := false
		for _, st := range newSettings().list {
			if st.env == k || (st.secret && st.env == name) {
				found = true
			}
		}
		if !found {
			t.Errorf("systemd duet.env: %s is not a setting", k)
		}
	}

	// Kubernetes: every file listed by kustomization.yaml, and nothing else.
	const kdir = "../../deploy/kubernetes"
	kust := yamlDocs(t, filepath.Join(kdir, "kustomization.yaml"))[0]
	files, _ := filepath.Glob(filepath.Join(kdir, "*.yaml"))
	var resources []string
	for _, r := range list(kust["resources"]) {
		resources = append(resources, str(r))
	}
	for _, f := range files {
		if b := filepath.Base(f); b != "kustomization.yaml" && !slices.Contains(resources, b) {
			t.Errorf("kubernetes: %s is not in kustomization.yaml", b)
		}
	}
	configFile := map[string]string{}
	type podSpec struct {
		name   string
		labels map[string]any
		ports  map[string]int // by name and by number
	}
	var pods []podSpec
	var services, pdbs []map[string]any
	kinds := map[string]int{}
	for _, r := range resources {
		for _, d := range yamlDocs(t, filepath.Join(kdir, r)) {
			kind := str(d["kind"])
			kinds[kind]++
			name := str(m(d, "metadata", "name"))
			switch kind {
			case "ConfigMap":
				if name == "duet-config" {
					body := str(m(d, "data", "duet.yaml"))
					var err error
					if configFile, err = newSettings().decodeFile("duet-config duet.yaml", []byte(body)); err != nil {
						t.Errorf("kubernetes: %v", err)
					}
				}
			case "Service":
				services = append(services, d)
			case "PodDisruptionBudget":
				pdbs = append(pdbs, d)
			}
		}
	}
	for _, r := range resources {
		for _, d := range yamlDocs(t, filepath.Join(kdir, r)) {
			kind := str(d["kind"])
			if kind != "Deployment" && kind != "StatefulSet" {
				continue
			}
			name := str(m(d, "metadata", "name"))
			tmpl := m(d, "spec", "template")
			ps := podSpec{name: name, labels: m(tmpl, "metadata", "labels").(map[string]any), ports: map[string]int{}}
			if sel := m(d, "spec", "selector", "matchLabels").(map[string]any); !labelsMatch(sel, ps.labels) {
				t.Errorf("kubernetes %s: selector does not match the pod labels", name)
			}
			for _, ct := range list(m(tmpl, "spec", "containers")) {
				for _, p := range list(m(ct, "ports")) {
					n := m(p, "containerPort").(int)
					ps.ports[str(m(p, "name"))] = n
					ps.ports[strconv.Itoa(n)] = n
				}
				for _, probe := range []string{"readinessProbe", "livenessProbe"} {
					if m(ct, probe) == nil {
						t.Errorf("kubernetes %s: no %s", name, probe)
					} else if pp := str(m(ct, probe, "httpGet", "port")); pp != "" && ps.ports[pp] == 0 {
						t.Errorf("kubernetes %s: %s port %q is not a container port", name, probe, pp)
					}
				}
				if m(ct, "resources", "requests") == nil {
					t.Errorf("kubernetes %s: no resource requests", name)
				}
				if !strings.Contains(str(m(ct, "image")), "duet") || str(m(ct, "image")) == "nats:2.11-alpine" {
					continue
				}
				dc := duetContainer{where: "kubernetes " + name, env: map[string]string{}, file: configFile}
				for _, e := range list(m(ct, "env")) {
					dc.env[str(m(e, "name"))] = str(m(e, "value"))
				}
				if dc.env["DUET_CONFIG"] != "/etc/duet/duet.yaml" {
					t.Errorf("kubernetes %s: DUET_CONFIG is %q", name, dc.env["DUET_CONFIG"])
				}
				for _, a := range list(m(ct, "args")) {
					dc.args = append(dc.args, str(a))
				}
				for _, p := range list(m(ct, "ports")) {
					dc.ports = append(dc.ports, m(p, "containerPort").(int))
				}
				dc.check(t)
				if str(m(ct, "readinessProbe", "httpGet", "path")) != "/readyz" {
					t.Errorf("kubernetes %s: readiness is not /readyz", name)
				}
			}
			pods = append(pods, ps)
			covered := false
			for _, pdb := range pdbs {
				if labelsMatch(m(pdb, "spec", "selector", "matchLabels").(map[string]any), ps.labels) {
					covered = true
				}
			}
			if !covered {
				t.Errorf("kubernetes %s: no PodDisruptionBudget", name)
			}
		}
	}
	// Every Service selects pods and targets a port they open.
	for _, svc := range services {
		name := str(m(svc, "metadata", "name"))
		sel, _ := m(svc, "spec", "selector").(map[string]any)
		var matched []podSpec
		for _, p := range pods {
			if labelsMatch(sel, p.labels) {
				matched = append(matched, p)
			}
		}
		if len(matched) == 0 {
			t.Errorf("kubernetes service %s selects no pods", name)
		}
		for _, p := range list(m(svc, "spec", "ports")) {
			target := str(m(p, "targetPort"))
			for _, pod := range matched {
				if pod.ports[target] == 0 {
					t.Errorf("kubernetes service %s: target port %q is not a port of %s", name, target, pod.name)
				}
			}
		}
	}
	for _, k := range []string{"StatefulSet", "Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} {
		if kinds[k] == 0 {
			t.Errorf("kubernetes: no %s", k)
		}
	}

	// The Dockerfile exposes the default ports and runs as non-root.
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	exposed := regexp.MustCompile(`(?m)^EXPOSE (.+)$`).FindStringSubmatch(string(df))
	s := newSettings()
	for _, l := range listenSettings {
		if !slices.Contains(strings.Fields(exposed[1]), strconv.Itoa(portOf(s.byFlag[l.flag].def))) {
			t.Errorf("Dockerfile does not EXPOSE %s's default port", l.flag)
		}
	}
	for _, want := range []string{"USER 65532", `CMD ["/usr/local/bin/duet", "healthcheck"]`, "CGO_ENABLED=0 go build"} {
		if !strings.Contains(string(df), want) {
			t.Errorf("Dockerfile lacks %q", want)
		}
	}
}

func toStrings(l []any) []string {
	var out []string
	for _, v := range l {
		out = append(out, str(v))
	}
	return out
}

func labelsMatch(sel, labels map[string]any) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// The Dockerfile's build command makes a static binary (no dynamic
// loader), so it runs on distroless/static.
func TestDockerfileBuildIsStatic(t *testing.T) {
	df, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	cmdLine := regexp.MustCompile(`CGO_ENABLED=0 go build -trimpath -ldflags "[^"]*" -o /out/duet \./cmd/duet`).Find(df)
	if cmdLine == nil {
		t.Fatal("Dockerfile lacks the duet build command")
	}
	out := filepath.Join(t.TempDir(), "duet")
	// Without -trimpath and -s -w, which change nothing about linking
	// statically but would miss the build cache of every package.
	cmd := exec.Command("go", "build", "-ldflags", "-X main.Version=test", "-o", out, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmdLine, err, b)
	}
	if runtime.GOOS != "linux" {
		return
	}
	f, err := elf.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the binary is dynamically linked")
		}
	}
	v, err := exec.Command(out, "--version").Output()
	if err != nil || string(v) != "duet test\n" {
		t.Fatalf("--version: %q %v", v, err)
	}
}

// metricDef is a metric the code registers: its kind and labels.
type metricDef struct {
	kind   string // Counter, Gauge, Histogram, Summary
	labels []string
}

// codeMetrics finds every duet_* metric the code defines (promauto or
// prometheus constructors), reading the source so that vectors nobody
// has used yet count too.
func codeMetrics(t *testing.T) map[string]metricDef {
	t.Helper()
	def := regexp.MustCompile(`New(Counter|Gauge|Histogram|Summary)(Vec)?\(prometheus\.\w+Opts\{\s*Name:\s*"(duet_[a-z0-9_]+)"`)
	labelList := regexp.MustCompile(`\[\]string\{([^}]*)\}`)
	out := map[string]metricDef{}
	err := filepath.WalkDir("../..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		src := string(b)
		locs := def.FindAllStringSubmatchIndex(src, -1)
		for i, l := range locs {
			md := metricDef{kind: src[l[2]:l[3]]}
			if l[4] >= 0 { // a Vec: its labels follow the options
				end := len(src)
				if i+1 < len(locs) {
					end = locs[i+1][0]
				}
				if m := labelList.FindStringSubmatch(src[l[1]:end]); m != nil {
					for _, q := range strings.Split(m[1], ",") {
						if q = strings.Trim(strings.TrimSpace(q), `"`); q != "" {
							md.labels = append(md.labels, q)
						}
					}
				}
			}
			out[src[l[6]:l[7]]] = md
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// checkExpr holds one PromQL expression to the code's metrics: every
// duet_* name exists (a histogram's _bucket, _sum and _count series
// included) and every label it matches on or groups by is one of them.
func checkExpr(t *testing.T, where, expr string, metrics map[string]metricDef) {
	t.Helper()
	ref := regexp.MustCompile(`(duet_[a-z0-9_]+)(\{[^}]*\})?`)
	for _, m := range ref.FindAllStringSubmatch(expr, -1) {
		name := m[1]
		md, ok := metrics[name]
		if !ok {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if base, cut := strings.CutSuffix(name, suf); cut {
					if d, found := metrics[base]; found && (d.kind == "Histogram" || d.kind == "Summary") {
						md, ok = d, true
						if suf == "_bucket" {
							md.labels = append(slices.Clone(md.labels), "le")
						}
					}
				}
			}
		}
		if !ok {
			t.Errorf("%s: %s is not a metric of the code: %s", where, name, expr)
			continue
		}
		for _, lm := range regexp.MustCompile(`([a-z_]+)\s*(=~|!~|!=|=)`).FindAllStringSubmatch(m[2], -1) {
			if !slices.Contains(md.labels, lm[1]) {
				t.Errorf("%s: %s has no label %q (has %v)", where, name, lm[1], md.labels)
			}
		}
	}
	// by (...) labels must belong to at least one metric of the expression.
	for _, by := range regexp.MustCompile(`by \(([^)]*)\)`).FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(by[1], ",") {
			l = strings.TrimSpace(l)
			found := false
			for _, m := range ref.FindAllStringSubmatch(expr, -1) {
				name := m[1]
				for _, suf := range []string{"", "_bucket"} {
					if d, ok := metrics[strings.TrimSuffix(name, suf)]; ok && (slices.Contains(d.labels, l) || (suf == "_bucket" && l == "le")) {
						found = true
					}
				}
			}
			if !found {
				t.Errorf("%s: grouping by %q, which no metric of the expression has: %s", where, l, expr)
			}
		}
	}
}

// TestOpsMetricsExist: every metric and label the Grafana dashboard and
// the Prometheus alerts use exists in the code, so renaming a metric
// breaks this test rather than a dashboard in production.
func TestOpsMetricsExist(t *testing.T) {
	metrics := codeMetrics(t)
	for _, want := range []string{"duet_devices", "duet_tasks_open", "duet_cwmp_sessions_total", "duet_cwmp_session_duration_seconds"} {
		if _, ok := metrics[want]; !ok {
			t.Fatalf("the source scan misses %s (found %d metrics)", want, len(metrics))
		}
	}
	if d := metrics["duet_devices"]; !slices.Equal(d.labels, []string{"protocol", "state"}) {
		t.Fatalf("duet_devices labels %v", d.labels)
	}
	// Grafana.
	var dash struct {
		Panels []struct {
			Title   string
			Type    string
			Targets []struct{ Expr string }
		}
	}
	b, err := os.ReadFile("../../deploy/grafana/duet.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("duet.json: %v", err)
	}
	exprs := 0
	for _, p := range dash.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("dashboard panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			checkExpr(t, "dashboard "+p.Title, tg.Expr, metrics)
			exprs++
		}
	}
	// Alerts.
	var rules struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Expr, For string
				Labels           map[string]string
				Annotations      map[string]string
			}
		}
	}
	b, err = os.ReadFile("../../deploy/prometheus/alerts.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("alerts.yaml: %v", err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Labels["severity"] == "" || r.Annotations["summary"] == "" {
				t.Errorf("alert %q lacks a name, expr, severity or summary", r.Alert)
			}
			checkExpr(t, "alert "+r.Alert, r.Expr, metrics)
			exprs++
		}
	}
	if exprs < 30 {
		t.Fatalf("only %d expressions checked", exprs)
	}
}
