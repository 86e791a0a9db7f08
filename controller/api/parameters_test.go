package api_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func TestParameterCache(t *testing.T) {
	e := newEnv(t)
	e.startRegistry(t)
	ctx := context.Background()
	const dev = "os::cache-1"
	inf := informEvent(dev, "1")
	inf.Device.Protocol = duetv1.Protocol_PROTOCOL_USP
	inf.Kind = &duetv1.Event_Inform{Inform: &duetv1.Inform{Params: []*duetv1.Parameter{
		{Path: "Device.DeviceInfo.SoftwareVersion", Value: "1", Type: duetv1.ParamType_PARAM_TYPE_STRING, Writable: duetv1.Writability_WRITABILITY_READ_ONLY},
		{Path: "Device.WiFi.SSID.1.SSID", Value: "a", Type: duetv1.ParamType_PARAM_TYPE_STRING, Writable: duetv1.Writability_WRITABILITY_READ_WRITE},
		{Path: "Device.WiFi.SSID.1.Enable", Value: "true", Type: duetv1.ParamType_PARAM_TYPE_BOOLEAN},
	}}}
	inf.Time = timestamppb.New(time.Now().Add(-time.Minute))
	newer := valueChange(dev, "Device.WiFi.SSID.1.SSID", "b")
	older := valueChange(dev, "Device.WiFi.SSID.1.SSID", "stale")
	older.Time = timestamppb.New(time.Now().Add(-time.Hour))
	for _, ev := range []*duetv1.Event{inf, newer, older} {
		if err := e.bus.PublishEvent(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	waitEvents(t, e, dev, 3)
	params := func(q string) api.ParameterList {
		t.Helper()
		code, body := e.do(t, "GET", "/api/v1/devices/"+dev+"/parameters"+q, "")
		var l api.ParameterList
		if code != 200 || json.Unmarshal([]byte(body), &l) != nil {
			t.Fatalf("parameters%s: %d %s", q, code, body)
		}
		return l
	}
	// Parameters commit in the events' transaction: once the events are
	// there, so is the cache.
	wifi := params("?path=Device.WiFi.")
	if len(wifi.Parameters) != 2 || wifi.Parameters[1].Path != "Device.WiFi.SSID.1.SSID" {
		t.Fatalf("subtree: %+v", wifi)
	}
	ssid := wifi.Parameters[1]
	// The value change won over the inform and the older change; type and
	// writability came from the inform and were kept.
	if ssid.Value != "b" || ssid.Type != "string" || ssid.Writable != "read_write" {
		t.Fatalf("SSID %+v", ssid)
	}
	if one := params("?path=Device.WiFi.SSID.1.SSID"); len(one.Parameters) != 1 {
		t.Fatalf("one parameter: %+v", one)
	}
	p1 := params("?limit=2")
	p2 := params("?limit=2&cursor=" + p1.NextCursor)
	if len(p1.Parameters) != 2 || len(p2.Parameters) != 1 || p2.NextCursor != "" {
		t.Fatalf("paging: %+v %+v", p1, p2)
	}
	if code, body := e.do(t, "GET", "/api/v1/devices/"+dev+"/parameters?path=Device..X", ""); code != 400 {
		t.Fatalf("bad path: %d %s", code, body)
	}
	// A Get read live (refresh) lands in the cache.
	serveUSP(t, e.bus, dev, &uspAdapter{})
	e.seen(t, dev, duetv1.Protocol_PROTOCOL_USP, "online")
	l := params("?path=Device.DeviceInfo.SoftwareVersion&refresh=true")
	if len(l.Parameters) != 1 || l.Parameters[0].Value != "hello" || l.Parameters[0].Type != "string" {
		t.Fatalf("after refresh: %+v", l)
	}
	// 3, plus the DeviceInfo facts of the USP online event (as an
	// onboarding's): Manufacturer, ManufacturerOUI, ProductClass and
	// SerialNumber.
	bustest.CheckFor(t, time.Second, 10*time.Millisecond, func() error {
		if n := len(params("").Parameters); n != 7 {
			return fmt.Errorf("%d parameters", n)
		}
		return nil
	})
	if sn := params("?path=Device.DeviceInfo.SerialNumber"); len(sn.Parameters) != 1 || sn.Parameters[0].Value != "SN."+dev {
		t.Fatalf("online event's serial number: %+v", sn)
	}
}
