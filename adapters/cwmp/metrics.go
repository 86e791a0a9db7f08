package cwmp

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics are process-wide (promauto registers them once on the default
// registry); names follow duet_<component>_<what>_<unit> (CONTRIBUTING.md, habit 12).
var (
	metricSessionsActive = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "duet_cwmp_sessions_active", Help: "CWMP sessions currently open.",
	})
	metricSessionsTotal = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_cwmp_sessions_total", Help: "CWMP sessions ended, by how they ended.",
	}, []string{"end"})
	metricInforms = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_cwmp_informs_total", Help: "Informs accepted.",
	})
	metricRPCs = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_cwmp_rpcs_total", Help: "ACS→CPE RPCs by method and outcome (ok, fault, error).",
	}, []string{"method", "outcome"})
	metricFaults = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_cwmp_faults_total", Help: "CPE faults received, by fault code.",
	}, []string{"code"})
	metricAuthFailures = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_cwmp_auth_failures_total", Help: "CPE authentication failures, by scheme.",
	}, []string{"scheme"})
	metricConnReqFallbacks = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_cwmp_connreq_fallbacks_total", Help: "Connection requests refused with an enrolment's new credentials and sent again with the old ones.",
	})
	metricAuthReplays = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_cwmp_auth_replays_total", Help: "Digest credentials refused because their nonce count was reused (replays).",
	})
	metricAuthNoQop = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_cwmp_auth_no_qop_total", Help: "Digest credentials refused because they carried no qop (DUET_CWMP_ALLOW_DIGEST_WITHOUT_QOP is off).",
	})
	metricSourceRefused = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_cwmp_source_refused_total", Help: "Connections refused because their source is outside DUET_CWMP_ALLOW_SOURCES.",
	})
	metricShed = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_cwmp_shed_total", Help: "Requests refused with 503, by reason.",
	}, []string{"reason"})
	metricBadRequests = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_cwmp_bad_requests_total", Help: "Requests refused with a 4xx, by reason.",
	}, []string{"reason"})
	metricSessionSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name: "duet_cwmp_session_duration_seconds", Help: "Duration of CWMP sessions.",
		Buckets: []float64{.01, .05, .1, .5, 1, 2, 5, 10, 30, 60, 300},
	})
	metricConnReqs = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_cwmp_connection_requests_total", Help: "Connection requests sent, by outcome.",
	}, []string{"outcome"})
)
