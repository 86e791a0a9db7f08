package controller

import (
	"context"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// A stuck task says why (issue 11 §5): each queued task carries the reason
// it waits (store.Wait*), stored with the task, shown in its JSON and logged
// at info once per change of reason, never per retry.

var metricTasksWaiting = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_tasks_waiting_changes_total",
	Help: "Times a device's queued tasks got a new waiting reason, by reason (device_offline, no_adapter, connection_request_failed, awaiting_session, awaiting_inform, device_busy, no_answer).",
}, []string{"reason"})

// waitNoAnswer: the device did not answer in time; the task is sent again.
const waitNoAnswer = "no_answer"

// waiting records why deviceID's queued tasks wait and logs a change.
func (q *TaskQueue) waiting(ctx context.Context, deviceID, reason string) {
	changed, err := q.o.Store.SetTasksWaiting(ctx, deviceID, reason)
	if err != nil {
		if ctx.Err() == nil {
			q.log.Warn("recording why tasks wait failed", "device", deviceID, "reason", reason, "err", err)
		}
		return
	}
	q.waitingChanged(deviceID, reason, changed)
}

// waitingChanged counts and logs a change of the reason deviceID's queued
// tasks wait (changed says whether it is one).
func (q *TaskQueue) waitingChanged(deviceID, reason string, changed bool) {
	if changed {
		label, _, _ := strings.Cut(reason, ":")
		metricTasksWaiting.WithLabelValues(label).Inc()
		q.log.Info("tasks waiting", "device", deviceID, "reason", reason)
	}
}

// waitReason names why a command that went back to the queue was not
// delivered; err is the bus's or adapter's error.
func waitReason(err error) string {
	switch {
	case devicemodel.ErrorCode(err) == devicemodel.CodeResourcesExceeded:
		return store.WaitDeviceBusy
	case strings.Contains(devicemodel.ErrorMessage(err), "nobody serves"):
		// NATS no responders: no adapter holds a session with the device.
		return store.WaitNoAdapter
	case neverSent(err):
		return store.WaitDeviceOffline
	}
	return waitNoAnswer
}

// markOfflineWaiting gives the queued tasks of offline devices the reason
// device_offline (each sweep; set-based).
func (q *TaskQueue) markOfflineWaiting(ctx context.Context) {
	changes, err := q.o.Store.MarkOfflineTasksWaiting(ctx)
	if err != nil {
		if ctx.Err() == nil {
			q.log.Warn("recording why tasks of offline devices wait failed", "err", err)
		}
		return
	}
	for _, id := range changes {
		metricTasksWaiting.WithLabelValues(store.WaitDeviceOffline).Inc()
		q.log.Info("tasks waiting", "device", id, "reason", store.WaitDeviceOffline)
	}
}

// connReqFailure is the short form of a failed connection request for the
// waiting reason: the innermost cause ("connection refused", "HTTP 401").
func connReqFailure(err error) string {
	m := devicemodel.ErrorMessage(err)
	if i := strings.LastIndex(m, ": "); i >= 0 && i+2 < len(m) {
		m = m[i+2:]
	}
	return m
}

// OnConnectionRequestFailed registers fn to be told of connection requests
// that failed after their retries. Call it before Start.
func (q *TaskQueue) OnConnectionRequestFailed(fn func(ctx context.Context, deviceID string, err error)) {
	q.connReqFailed = fn
}
