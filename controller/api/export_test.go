package api

import "github.com/prometheus/client_golang/prometheus"

// MetricSSEDropped exposes the counter to the external test package.
func MetricSSEDropped() prometheus.Counter { return metricSSEDropped }
