package cwmp

import (
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestMetricNames lints our metric names: duet_cwmp_<what>_<unit>
// (CONTRIBUTING.md, habit 12).
func TestMetricNames(t *testing.T) {
	metricShed.WithLabelValues("lint").Add(0)
	metricBadRequests.WithLabelValues("lint").Add(0)
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^duet_cwmp_[a-z]+(_[a-z]+)*_(total|seconds|active)$`)
	n := 0
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "duet_cwmp_") {
			continue
		}
		n++
		if !re.MatchString(mf.GetName()) {
			t.Errorf("metric %s does not follow duet_cwmp_<what>_<unit>", mf.GetName())
		}
	}
	if n < 5 {
		t.Fatalf("only %d duet_cwmp_ metrics registered", n)
	}
}
