package api

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

var (
	metricSSEClients = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "duet_api_sse_clients",
		Help: "Clients connected to GET /api/v1/events.",
	})
	metricSSEDropped = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_api_sse_slow_clients_dropped_total",
		Help: "Event-stream clients disconnected because they fell a whole buffer behind.",
	})
	metricSSEEvents = promauto.NewCounter(prometheus.CounterOpts{
		Name: "duet_api_sse_events_sent_total",
		Help: "Events written to event-stream clients.",
	})
)

// EventJSON is a stored device event in the API.
type EventJSON struct {
	ID       string          `json:"id"`
	DeviceID string          `json:"device_id"`
	Type     string          `json:"type"`
	Time     time.Time       `json:"time"`
	Event    json.RawMessage `json:"event"` // the duet.v1.Event, as protoJSON renders it
	// Redacted: secret values in the event show as "***".
	Redacted bool `json:"redacted,omitempty"`
}

// EventList is the body of GET /api/v1/devices/{id}/events.
type EventList struct {
	Events     []EventJSON `json:"events"`
	NextCursor string      `json:"next_cursor,omitempty"`
}

func (a *Server) listEvents(w http.ResponseWriter, r *http.Request) (int, error) {
	q, limit, cursor, err := pageParams(r, "type")
	if err != nil {
		return 0, err
	}
	f := store.EventFilter{DeviceID: r.PathValue("id"), Limit: limit}
	if v, ok := q["type"]; ok {
		if !controller.IsEventKind(v) {
			return 0, badParam("type", "must be one of "+controller.EventKindNames())
		}
		f.Kind = v
	}
	if cursor != "" {
		c, err := store.DecodeEventCursor(cursor)
		if err != nil {
			return 0, badParam("cursor", "malformed; pass next_cursor from the previous page")
		}
		f.Before = &c
	}
	if _, err := a.store.FindDeviceByID(r.Context(), f.DeviceID); err != nil {
		return 0, err
	}
	evs, next, err := a.store.FindDeviceEvents(r.Context(), f)
	if err != nil {
		return 0, err
	}
	out := EventList{Events: make([]EventJSON, 0, len(evs)), NextCursor: next}
	for _, e := range evs {
		ej := EventJSON{ID: e.ID, DeviceID: e.DeviceID, Type: e.Kind, Time: e.Time.UTC(), Event: json.RawMessage("null")}
		ev := &duetv1.Event{}
		if proto.Unmarshal(e.Payload, ev) == nil {
			m, hidden := a.secrets.RedactProto(ev)
			ej.Redacted = hidden
			if b, err := controller.ProtoJSON(m); err == nil {
				ej.Event = b
			}
		}
		out.Events = append(out.Events, ej)
	}
	return writeJSON(w, http.StatusOK, out), nil
}

// sseHeartbeat keeps idle streams alive through proxies.
const sseHeartbeat = 15 * time.Second

// streamEvents serves GET /api/v1/events as Server-Sent Events: live
// events from the bus, filtered by device and type through the NATS
// subject itself. Each client has a bounded buffer; a client a whole
// buffer behind is told so and disconnected (and counted) rather than
// slowing anyone else or growing memory. Clients resume from the history
// endpoint, or integrators replay from JetStream.
func (a *Server) streamEvents(w http.ResponseWriter, r *http.Request) (int, error) {
	q, err := parseQuery(r.URL.RawQuery)
	if err != nil {
		return 0, err
	}
	device, kind := "*", "*"
	for k, v := range q {
		if len(v) > 1 {
			return 0, badParam(k, "given more than once")
		}
		switch k {
		case "device":
			if err := devicemodel.ValidateDeviceID(v[0]); err != nil {
				return 0, badParam(k, devicemodel.ErrorMessage(err))
			}
			device = bus.EncodeToken(v[0])
		case "type":
			if !controller.IsEventKind(v[0]) {
				return 0, badParam(k, "must be one of "+controller.EventKindNames())
			}
			kind = v[0]
		default:
			return 0, badParam(k, "unknown parameter")
		}
	}
	fl, ok := w.(http.Flusher)
	if !ok || a.o.Bus == nil {
		return 0, devicemodel.Errorf(devicemodel.CodeUnavailable, "event streaming is not available")
	}
	ch := make(chan *nats.Msg, a.o.SSEBuffer)
	slow := make(chan struct{})
	var slowOnce sync.Once
	sub, err := a.o.Bus.Conn().Subscribe(fmt.Sprintf("%s.*.%s.%s", bus.EventPrefix, device, kind), func(m *nats.Msg) {
		select {
		case ch <- m:
		default:
			slowOnce.Do(func() {
				metricSSEDropped.Inc()
				close(slow)
			})
		}
	})
	if err != nil {
		return 0, devicemodel.Errorf(devicemodel.CodeUnavailable, "subscribe: %v", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	metricSSEClients.Inc()
	defer metricSSEClients.Dec()
	// A stream outlives the server's write timeout by design.
	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Time{})
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = fmt.Fprint(w, ": duet event stream\n\n")
	fl.Flush()
	beat := time.NewTicker(sseHeartbeat)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return http.StatusOK, nil
		case <-a.stop:
			return http.StatusOK, nil
		case <-slow:
			_, _ = fmt.Fprintf(w, "event: error\ndata: {\"code\":\"resources_exceeded\",\"message\":\"client fell %d events behind; reconnect and fill the gap from /devices/{id}/events\"}\n\n", cap(ch))
			fl.Flush()
			return http.StatusOK, nil
		case <-beat.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return http.StatusOK, nil
			}
			fl.Flush()
		case m := <-ch:
			ev := &duetv1.Event{}
			if proto.Unmarshal(m.Data, ev) != nil {
				continue
			}
			a.secrets.RedactMessage(ev.ProtoReflect())
			b, err := controller.ProtoJSON(ev)
			if err != nil {
				continue
			}
			// protoJSON's output is one line, as SSE data needs.
			if _, err := fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", ev.GetId(), bus.EventKind(ev), b); err != nil {
				return http.StatusOK, nil
			}
			fl.Flush()
			metricSSEEvents.Inc()
		}
	}
}
