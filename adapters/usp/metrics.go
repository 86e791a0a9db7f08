package usp

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Metrics of the USP endpoint, named duet_usp_<what>_<unit> (CONTRIBUTING.md
// habit 12). They are process-wide: several Endpoints in one process add up.
var (
	metricRecordsReceived = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_usp_records_received_total",
		Help: "USP records handed to the endpoint by a transport, by MTP.",
	}, []string{"mtp"})
	metricRecordsDropped = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_usp_records_dropped_total",
		Help: "USP records dropped, by MTP and reason (garbage, wrong_to_id, eid_mismatch, unknown_msg_id, ...).",
	}, []string{"mtp", "reason"})
	metricRequests = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_usp_requests_total",
		Help: "Requests sent to agents, by message type and outcome (ok, error, timeout, unavailable).",
	}, []string{"type", "outcome"})
	metricRequestSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "duet_usp_request_duration_seconds",
		Help:    "Round trip of a request to an agent, by message type.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
	}, []string{"type"})
	metricAgentsOnline = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "duet_usp_agents_online_count",
		Help: "Agents with a session on this process.",
	})
	metricNotifications = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_usp_notifications_total",
		Help: "Notify messages received, by kind: one per happening; kind=duplicate counts retransmissions and copies of a happening already published (a Boot! per matching subscription), answered but not published again.",
	}, []string{"kind"})
	metricKeepAliveLost = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_usp_keepalive_lost_total",
		Help: "Agents taken offline because they did not answer a keep-alive GetSupportedProtocol.",
	})
	metricQueueDropped = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_usp_queue_dropped_total",
		Help: "Work dropped because a bounded queue was full, by queue (events, onboard).",
	}, []string{"queue"})
	metricOnboardings = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_usp_onboardings_total",
		Help: "Onboarding runs, by outcome (ok, failed; coalesced: asked for again for the same happening and not run).",
	}, []string{"outcome"})
)

var metricRestored = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_usp_routes_restored_total",
	Help: "Agents the adapter was told to serve at start (last online over its MTP), by MTP and outcome (answered, lost, invalid).",
}, []string{"mtp", "outcome"})
