package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func TestListDevicesRejectsBadParameters(t *testing.T) {
	e := newEnv(t)
	for query, param := range map[string]string{
		"online=maybe":      "online",
		"protocol=snmp":     "protocol",
		"limit=0":           "limit",
		"limit=abc":         "limit",
		"cursor=%%%":        "cursor",
		"colour=red":        "colour",
		"online=1&online=0": "online",
	} {
		res, err := http.Get(e.api.URL + "/api/v1/devices?" + query)
		if err != nil {
			t.Fatal(err)
		}
		var body controller.ErrorJSON
		_ = json.NewDecoder(res.Body).Decode(&body)
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest || body.Code != "invalid_argument" || !strings.Contains(body.Message, `"`+param+`"`) {
			t.Errorf("%s: %d %+v, want 400 naming %q", query, res.StatusCode, body, param)
		}
	}
	res, err := http.Get(e.api.URL + "/api/v1/nothing-here")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusNotFound || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("unknown route: %d %s", res.StatusCode, res.Header.Get("Content-Type"))
	}
}

func TestListDevicesFilters(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	for i := 0; i < 6; i++ {
		ev := informEvent(fmt.Sprintf("f-%d", i), []string{"1.0", "2.0"}[i%2])
		if i >= 4 {
			ev.Device.Protocol = duetv1.Protocol_PROTOCOL_USP
		}
		if err := e.bus.PublishEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	list := func(q string) controller.DeviceList {
		res, err := http.Get(e.api.URL + "/api/v1/devices?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var l controller.DeviceList
		if err := json.NewDecoder(res.Body).Decode(&l); err != nil || res.StatusCode != 200 {
			t.Fatalf("%s: %d %v", q, res.StatusCode, err)
		}
		return l
	}
	bustest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		if n := len(list("").Devices); n != 6 {
			return fmt.Errorf("%d devices", n)
		}
		return nil
	})
	if n := len(list("protocol=cwmp&software_version=2.0").Devices); n != 2 {
		t.Fatalf("cwmp 2.0: %d, want 2", n)
	}
	if n := len(list("protocol=usp&online=true&manufacturer=Acme&product_class=ONT").Devices); n != 2 {
		t.Fatalf("usp: %d, want 2", n)
	}
	p1 := list("limit=4")
	if len(p1.Devices) != 4 || p1.NextCursor == "" {
		t.Fatalf("page 1: %d devices, cursor %q", len(p1.Devices), p1.NextCursor)
	}
	p2 := list("limit=4&cursor=" + p1.NextCursor)
	if len(p2.Devices) != 2 || p2.NextCursor != "" || p2.Devices[0].ID <= p1.Devices[3].ID {
		t.Fatalf("page 2: %+v", p2)
	}
}
