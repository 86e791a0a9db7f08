package bus

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	metricEventsPublished = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_bus_events_published_total",
		Help: "Device events stored in the event stream, by protocol and kind.",
	}, []string{"protocol", "kind"})
	metricPublishSeconds = promauto.NewHistogram(prometheus.HistogramOpts{
		Name:    "duet_bus_publish_duration_seconds",
		Help:    "Time to publish an event and receive the stream's acknowledgement.",
		Buckets: prometheus.ExponentialBuckets(0.0002, 2, 14),
	})
	metricRequestSeconds = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "duet_bus_command_duration_seconds",
		Help:    "Round trip of a command request to an adapter, by protocol.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
	}, []string{"protocol"})
	metricBusErrors = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "duet_bus_errors_total",
		Help: "Bus failures: publish (stream did not ack), serve (undecodable request), async (NATS slow consumer and similar).",
	}, []string{"where"})
)
