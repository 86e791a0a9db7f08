package controller

import "github.com/prometheus/client_golang/prometheus"

// MetricEventsInvalid exposes the counter to the external test package.
func MetricEventsInvalid(reason string) prometheus.Counter {
	return metricEventsInvalid.WithLabelValues(reason)
}

// MetricSSEDropped exposes the counter to the external test package.
func MetricSSEDropped() prometheus.Counter { return metricSSEDropped }

// MetricEventsDeadLettered is the dead-letter counter.
func MetricEventsDeadLettered() prometheus.Counter { return metricEventsDeadLettered }
