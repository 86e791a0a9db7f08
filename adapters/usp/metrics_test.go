package usp

import (
	"regexp"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricNames lints the names of this package's metrics: CONTRIBUTING.md wants
// duet_<component>_<what>_<unit>.
func TestMetricNames(t *testing.T) {
	re := regexp.MustCompile(`^duet_usp_[a-z_]+_(total|seconds|count|bytes)$`)
	// Touch each vector so it is gathered.
	metricRecordsReceived.WithLabelValues("lint")
	metricRecordsDropped.WithLabelValues("lint", "lint")
	metricRequests.WithLabelValues("lint", "lint")
	metricRequestSeconds.WithLabelValues("lint")
	metricNotifications.WithLabelValues("lint")
	metricQueueDropped.WithLabelValues("lint")
	metricOnboardings.WithLabelValues("lint")
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, mf := range mfs {
		name := mf.GetName()
		if len(name) < 9 || name[:9] != "duet_usp_" {
			continue
		}
		n++
		if !re.MatchString(name) {
			t.Errorf("metric %s does not read duet_usp_<what>_<unit>", name)
		}
		if mf.GetHelp() == "" {
			t.Errorf("metric %s has no help", name)
		}
	}
	if n < 8 {
		t.Fatalf("found %d duet_usp_ metrics, want at least 8", n)
	}
}
