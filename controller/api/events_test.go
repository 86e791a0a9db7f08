package api_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func valueChange(id, path, value string) *duetv1.Event {
	return &duetv1.Event{
		Device: &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_USP},
		Kind: &duetv1.Event_ValueChange{ValueChange: &duetv1.ValueChange{
			Params: []*duetv1.Parameter{{Path: path, Value: value}}}},
	}
}

func TestDeviceEventHistory(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	const dev = "hist-1"
	old := informEvent(dev, "0")
	old.Time = timestamppb.New(time.Now().Add(-3 * time.Hour))
	if err := e.bus.PublishEvent(ctx, old); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		ev := informEvent(dev, fmt.Sprint(i+1))
		if i == 1 {
			ev = valueChange(dev, "Device.WiFi.SSID.1.SSID", "v")
			ev.Device.Protocol = duetv1.Protocol_PROTOCOL_CWMP
		}
		if err := e.bus.PublishEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	waitEvents(t, e, dev, 4)
	list := func(q string) api.EventList {
		t.Helper()
		code, body := e.do(t, "GET", "/api/v1/devices/"+dev+"/events"+q, "")
		var l api.EventList
		if code != 200 || json.Unmarshal([]byte(body), &l) != nil {
			t.Fatalf("events%s: %d %s", q, code, body)
		}
		return l
	}
	all := list("")
	if len(all.Events) != 4 || all.Events[3].ID != old.Id || all.Events[0].Type != "inform" {
		t.Fatalf("history: %+v", all)
	}
	for i := 1; i < 4; i++ {
		if all.Events[i].Time.After(all.Events[i-1].Time) {
			t.Fatal("history is not newest first")
		}
	}
	vc := list("?type=value_change")
	if len(vc.Events) != 1 || !strings.Contains(string(vc.Events[0].Event), `"Device.WiFi.SSID.1.SSID"`) {
		t.Fatalf("type filter: %+v", vc)
	}
	p1 := list("?limit=3")
	p2 := list("?limit=3&cursor=" + p1.NextCursor)
	if len(p1.Events) != 3 || p1.NextCursor == "" || len(p2.Events) != 1 || p2.Events[0].ID != old.Id || p2.NextCursor != "" {
		t.Fatalf("paging: %+v / %+v", p1, p2)
	}
	for q, want := range map[string]int{"?type=nonsense": 400, "?cursor=zz": 400, "?colour=red": 400} {
		if code, _ := e.do(t, "GET", "/api/v1/devices/"+dev+"/events"+q, ""); code != want {
			t.Errorf("%s: %d, want %d", q, code, want)
		}
	}
	if code, _ := e.do(t, "GET", "/api/v1/devices/nobody/events", ""); code != 404 {
		t.Fatalf("unknown device: %d", code)
	}
	// Retention: the 3-hour-old event goes, the rest stay.
	p := controller.StartHistoryPruner(e.store, 2*time.Hour, nil)
	defer p.Stop()
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := len(list("").Events); n != 3 {
			return fmt.Errorf("%d events after pruning, want 3", n)
		}
		return nil
	})
}

// sseClient reads an event stream.
type sseClient struct {
	res *http.Response
	sc  *bufio.Scanner
}

func openStream(t *testing.T, e *env, apiURL, query string) *sseClient {
	t.Helper()
	// A deadline on the whole stream, so a missing event fails the test
	// instead of hanging it.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", apiURL+"/api/v1/events"+query, nil)
	req.Header.Set("Authorization", "Bearer "+e.token)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	c := &sseClient{res: res, sc: sc}
	if l := c.line(t); !strings.HasPrefix(l, ":") {
		t.Fatalf("stream starts with %q", l)
	}
	return c
}

func (c *sseClient) line(t *testing.T) string {
	t.Helper()
	if !c.sc.Scan() {
		t.Fatalf("stream ended: %v", c.sc.Err())
	}
	return c.sc.Text()
}

// next returns the next event's type and data, skipping comments.
func (c *sseClient) next(t *testing.T) (string, string) {
	t.Helper()
	var typ, data string
	for {
		l := c.line(t)
		switch {
		case l == "" && data != "":
			return typ, data
		case strings.HasPrefix(l, "event: "):
			typ = strings.TrimPrefix(l, "event: ")
		case strings.HasPrefix(l, "data: "):
			data = strings.TrimPrefix(l, "data: ")
		}
	}
}

func TestEventStreamFiltersByDeviceAndType(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := api.New(api.Options{Store: e.store, Bus: e.bus})
	srv := httptest.NewServer(a)
	defer srv.Close()
	defer a.Close() // ends the streams, which srv.Close waits for
	s := openStream(t, e, srv.URL, "?device=os::sse-1&type=value_change")
	all := openStream(t, e, srv.URL, "")
	for _, ev := range []*duetv1.Event{
		valueChange("os::sse-2", "Device.X", "other device"),
		informEvent("os::sse-1", "other type"),
		valueChange("os::sse-1", "Device.X", "wanted"),
	} {
		if err := e.bus.PublishEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	typ, data := s.next(t)
	if typ != "value_change" || !strings.Contains(data, `"wanted"`) || !strings.Contains(data, `"os::sse-1"`) {
		t.Fatalf("filtered stream got %s %s", typ, data)
	}
	for i, want := range []string{"other device", "other type", "wanted"} {
		_, data := all.next(t)
		if !strings.Contains(data, want) {
			t.Fatalf("unfiltered event %d: %s, want %q", i, data, want)
		}
	}
	if code, _ := e.do(t, "GET", "/api/v1/events?type=bogus", ""); code != 400 {
		t.Fatalf("bad type: %d", code)
	}
}

func TestSlowEventStreamClientIsDropped(t *testing.T) {
	e := newEnv(t)
	a := api.New(api.Options{Store: e.store, Bus: e.bus, SSEBuffer: 4})
	srv := httptest.NewServer(a)
	defer srv.Close()
	defer a.Close()
	before := testutil.ToFloat64(api.MetricSSEDropped())
	s := openStream(t, e, srv.URL, "")
	// The client reads nothing while ~40 MB of events arrive: more than
	// the socket buffers hold, so the handler blocks and its buffer fills.
	big := strings.Repeat("x", 64<<10)
	for i := 0; i < 600; i++ {
		ev := valueChange("os::slow", "Device.X", big)
		ev.Id = bus.NewID()
		b, _ := proto.Marshal(ev)
		if err := e.bus.Conn().Publish(bus.EventSubject(devicemodel.ProtocolUSP, "os::slow", "value_change"), b); err != nil {
			t.Fatal(err)
		}
	}
	_ = e.bus.Conn().Flush()
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if got := testutil.ToFloat64(api.MetricSSEDropped()) - before; got != 1 {
			return fmt.Errorf("dropped %v", got)
		}
		return nil
	})
	// Draining what was buffered ends with the error event and EOF.
	var last string
	for s.sc.Scan() {
		if l := s.sc.Text(); strings.HasPrefix(l, "event: ") {
			last = l
		}
	}
	if last != "event: error" {
		t.Fatalf("stream ended after %q, want an error event", last)
	}
}

// TestEventStreamOutlivesWriteTimeout: the API server has a write timeout
// (issue 15 §8), which an event stream, open for good, must not hit. Here
// the timeout has passed before the handler writes anything; the stream
// still delivers.
func TestEventStreamOutlivesWriteTimeout(t *testing.T) {
	e := newEnv(t)
	a := api.New(api.Options{Store: e.store, Bus: e.bus})
	srv := httptest.NewUnstartedServer(a)
	srv.Config.WriteTimeout = time.Nanosecond
	srv.Start()
	defer srv.Close()
	defer a.Close()
	s := openStream(t, e, srv.URL, "?device=os::sse-wt")
	if err := e.bus.PublishEvent(context.Background(), valueChange("os::sse-wt", "Device.X", "late")); err != nil {
		t.Fatal(err)
	}
	if _, data := s.next(t); !strings.Contains(data, `"late"`) {
		t.Fatalf("stream got %s", data)
	}
}
