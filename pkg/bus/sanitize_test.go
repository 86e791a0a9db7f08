package bus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestPublishEventBoundsDeviceTexts: the two poison inputs of issue 15 §1
// (a USP agent's SoftwareVersion "v1\x00nul", a CPE's 6,000-character
// Manufacturer) and a parameter value with a NUL do not reach the bus as
// sent: the facts are dropped (unknown), the parameter is left out, good
// texts are untouched, and each refusal is counted. Before the change the
// event went on the bus as sent and stopped the registry.
func TestPublishEventBoundsDeviceTexts(t *testing.T) {
	b, _ := bustest.Start(t)
	ctx := context.Background()
	before := testutil.ToFloat64(bus.MetricFieldsRefused("device.manufacturer", "too_long"))
	ev := &duetv1.Event{
		Device: &duetv1.DeviceIdentity{Id: "00D09E-ONT-SN1", Protocol: duetv1.Protocol_PROTOCOL_CWMP,
			Manufacturer: strings.Repeat("M", 6000), SoftwareVersion: "v1\x00nul", ModelName: "Good"},
		Reachability: &duetv1.Reachability{ConnectionRequestUrl: "http://192.0.2.1:7547/\x00"},
		Kind: &duetv1.Event_Inform{Inform: &duetv1.Inform{Params: []*duetv1.Parameter{
			{Path: "Device.A", Value: "ok"},
			{Path: "Device.B", Value: "bad\x00"},
			{Path: "Device.C", Value: strings.Repeat("v", 70_000)},
			{Path: "Device.D", Value: "also ok"},
		}}},
	}
	if err := b.PublishEvent(ctx, ev); err != nil {
		t.Fatal(err)
	}
	s, err := b.JetStream().Stream(ctx, bus.EventStream)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := s.GetLastMsgForSubject(ctx, bus.EventSubject("cwmp", "00D09E-ONT-SN1", "inform"))
	if err != nil {
		t.Fatal(err)
	}
	got := &duetv1.Event{}
	if err := proto.Unmarshal(msg.Data, got); err != nil {
		t.Fatal(err)
	}
	d := got.GetDevice()
	if d.Manufacturer != "" || d.SoftwareVersion != "" || d.ModelName != "Good" {
		t.Errorf("facts on the bus: manufacturer %d bytes, software %q, model %q; want the bad ones dropped", len(d.Manufacturer), d.SoftwareVersion, d.ModelName)
	}
	if u := got.GetReachability().GetConnectionRequestUrl(); u != "" {
		t.Errorf("connection request URL %q with a NUL went on the bus", u)
	}
	var paths []string
	for _, p := range got.GetInform().GetParams() {
		paths = append(paths, p.Path)
	}
	if strings.Join(paths, ",") != "Device.A,Device.D" {
		t.Errorf("parameters on the bus %v, want Device.A,Device.D", paths)
	}
	if n := testutil.ToFloat64(bus.MetricFieldsRefused("device.manufacturer", "too_long")) - before; n != 1 {
		t.Errorf("refusals counted %v, want 1", n)
	}
}

// TestCommandResultBounded: a device's answer to a command (a Get result
// with a NUL value and a path past the limit) is bounded before the reply
// leaves the adapter, as events are.
func TestCommandResultBounded(t *testing.T) {
	b, _ := bustest.Start(t)
	sub, err := b.ServeCommands(bus.CommandSubject("usp", "os::dev-res"), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		return &duetv1.CommandResult{Result: &duetv1.CommandResult_Get{Get: &duetv1.GetResult{Params: []*duetv1.Parameter{
			{Path: "Device.A", Value: "ok"}, {Path: "Device.B", Value: "x\x00y"}, {Path: "Device." + strings.Repeat("P", 3000), Value: "v"},
		}}}}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := b.Request(ctx, "usp", &duetv1.Command{DeviceId: "os::dev-res", Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device."}}}})
	if err != nil {
		t.Fatal(err)
	}
	ps := res.GetGet().GetParams()
	if len(ps) != 1 || ps[0].Path != "Device.A" {
		t.Fatalf("params %v, want only Device.A", ps)
	}
}
