package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/duet-dm/duet/pkg/bus"
)

// TestDocsNameRealThings keeps the guides in docs/ and the README true to
// the code: every DUET_* variable they name is a setting (or the _FILE
// form of a secret one), every duet_* metric is one the code defines, and
// every relative link points at a file that exists.
func TestDocsNameRealThings(t *testing.T) {
	s := newSettings()
	known := map[string]bool{
		// JetStream stream names, not settings (pkg/bus).
		bus.EventStream: true, bus.PolicyStream: true, bus.DeadLetterStream: true,
		// The settings file, read before the settings (--config).
		"DUET_CONFIG": true,
		// The tests' database (Makefile, docs/testing.md).
		"DUET_TEST_DATABASE_URL": true,
		// The knobs of the e2e benchmarks (e2e/duetsim_bench_test.go).
		"DUET_BENCH_CPES": true, "DUET_BENCH_INTERVAL": true, "DUET_BENCH_WARMUP": true, "DUET_BENCH_WINDOW": true,
	}
	for _, st := range s.list {
		known[st.env] = true
		if st.secret {
			known[st.env+"_FILE"] = true
		}
	}
	metrics := codeMetrics(t)
	files, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "../../README.md")
	envRef := regexp.MustCompile(`DUET_[A-Z0-9_]*[A-Z0-9]`)
	metricRef := regexp.MustCompile(`\bduet_[a-z0-9_]*[a-z0-9]\b`)
	linkRef := regexp.MustCompile(`\]\(([^)#\s]+)(?:#[^)\s]*)?\)`)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		name := strings.TrimPrefix(f, "../../")
		for _, l := range envRef.FindAllStringIndex(text, -1) {
			v := text[l[0]:l[1]]
			if strings.HasPrefix(text[l[1]:], "_*") && settingFamily(v, known) {
				continue // a family: DUET_CWMP_OFFLINE_*
			}
			if !known[v] {
				t.Errorf("%s names %s, which is not a setting", name, v)
				known[v] = true // report once
			}
		}
		for _, v := range metricRef.FindAllString(text, -1) {
			base := v
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if _, ok := metrics[base]; !ok {
					base = strings.TrimSuffix(base, suf)
				}
			}
			if _, ok := metrics[base]; !ok && !prefixOfMetric(v, metrics) {
				t.Errorf("%s names the metric %s, which the code does not define", name, v)
			}
		}
		for _, m := range linkRef.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(f), target)); err != nil {
				t.Errorf("%s links to %s, which does not exist", name, target)
			}
		}
	}
}

// prefixOfMetric allows a family named by its prefix in prose
// ("duet_cwmp_…").
func prefixOfMetric(v string, metrics map[string]metricDef) bool {
	for m := range metrics {
		if strings.HasPrefix(m, v+"_") {
			return true
		}
	}
	return false
}

// settingFamily reports whether some setting's name starts with prefix_.
func settingFamily(prefix string, known map[string]bool) bool {
	for k := range known {
		if strings.HasPrefix(k, prefix+"_") {
			return true
		}
	}
	return false
}
