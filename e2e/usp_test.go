package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

const controllerEID = "self::duet-controller"

// uspTransport says how simulated agents reach the running binary.
type uspTransport struct {
	name  string
	maker string // distinct DeviceInfo.Manufacturer per transport
	dial  func(env map[string]string) agent.DialFunc
}

var uspTransports = []uspTransport{
	{name: "mqtt", maker: "SimCo MQTT", dial: func(env map[string]string) agent.DialFunc {
		return func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			return agent.DialMQTT(ctx, a, agent.MQTTConfig{
				Broker: "127.0.0.1:" + env["DUET_MQTT_PORT"], ControllerTopic: "usp/controller/" + controllerEID,
				AgentTopic: "usp/agent/" + a.EndpointID(),
			})
		}
	}},
	{name: "stomp", maker: "SimCo STOMP", dial: func(env map[string]string) agent.DialFunc {
		return func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			return agent.DialSTOMP(ctx, a, agent.STOMPConfig{
				Server: "127.0.0.1:" + env["DUET_STOMP_PORT"], Destination: "/queue/agent-" + a.EndpointID(),
				ControllerDestination: "/queue/usp.controller",
			})
		}
	}},
	{name: "websocket", maker: "SimCo WS", dial: func(env map[string]string) agent.DialFunc {
		return func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			return agent.DialWebSocket(ctx, a, agent.WebSocketConfig{URL: "ws://" + env["DUET_WS_ADDR"] + "/usp"})
		}
	}},
}

// TestUSPFleetOnEveryTransport starts `duet serve` and 100 simulated agents
// on each transport: all appear online in the API with their DeviceInfo,
// and a Set sent on the bus is followed by its ValueChange event.
func TestUSPFleetOnEveryTransport(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	b := connectEmbeddedBus(t, env)
	ctx := context.Background()

	const perTransport = 100
	fleets := map[string]*agent.Fleet{}
	want := map[string]string{} // endpoint ID -> manufacturer
	for ti, tr := range uspTransports {
		fleet, err := agent.StartFleet(ctx, perTransport, func(i int) agent.Config {
			return agent.Config{
				SerialNumber: fmt.Sprintf("%s%04d", strings.ToUpper(tr.name), i), OUI: fmt.Sprintf("00AB%02d", ti),
				Manufacturer: tr.maker, SoftwareVersion: "7." + tr.name, ControllerID: controllerEID,
			}
		}, tr.dial(env))
		if err != nil {
			t.Fatalf("%s fleet: %v", tr.name, err)
		}
		t.Cleanup(func() { fleet.Close() })
		fleets[tr.name] = fleet
		for _, a := range fleet.Agents() {
			want[a.EndpointID()] = tr.maker
		}
	}

	bustest.CheckFor(t, 120*time.Second, 250*time.Millisecond, func() error {
		code, body := d.get("/api/v1/devices?protocol=usp&limit=1000")
		if code != 200 {
			return fmt.Errorf("list: %d %s", code, body)
		}
		var list struct {
			Devices []map[string]any `json:"devices"`
		}
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			return err
		}
		ok := 0
		var missing string
		for _, dev := range list.Devices {
			maker, known := want[dev["id"].(string)]
			if !known {
				continue
			}
			// DeviceInfo arrives with onboarding's Get, after the Connect record.
			if dev["online"] == true && dev["manufacturer"] == maker && dev["serial_number"] != "" &&
				strings.HasPrefix(dev["software_version"].(string), "7.") && dev["model_name"] != "" {
				ok++
			} else {
				missing = fmt.Sprint(dev)
			}
		}
		if ok != len(want) {
			return fmt.Errorf("%d of %d agents online with DeviceInfo (e.g. %s)", ok, len(want), missing)
		}
		return nil
	})

	for _, tr := range uspTransports {
		t.Run("set-then-value-change/"+tr.name, func(t *testing.T) {
			setThenValueChange(t, b, fleets[tr.name].Agents()[7].EndpointID())
		})
	}
}

// setThenValueChange subscribes the agent to ValueChange on an SSID (an Add
// on Device.LocalAgent.Subscription., as an integrator would), Sets it over
// the bus, and waits for the value_change event on the bus.
func setThenValueChange(t *testing.T, b *bus.Bus, eid string) {
	ctx := context.Background()
	request := func(cmd *duetv1.Command) *duetv1.CommandResult {
		t.Helper()
		cmd.DeviceId = eid
		cmd.Timeout = durationpb.New(15 * time.Second)
		res, err := b.Request(ctx, devicemodel.ProtocolUSP, cmd)
		if err != nil {
			t.Fatal(err)
		}
		if res.Error != nil {
			t.Fatalf("%v failed: %v", cmd.Op, res.Error)
		}
		return res
	}
	add := request(&duetv1.Command{Op: &duetv1.Command_Add{Add: &duetv1.AddRequest{
		ObjectPath: "Device.LocalAgent.Subscription.",
		Params: []*duetv1.Parameter{
			{Path: "ID", Value: "e2e-vc"}, {Path: "Enable", Value: "true"}, {Path: "NotifType", Value: "ValueChange"},
			{Path: "ReferenceList", Value: "Device.WiFi.SSID.1.SSID"},
		},
	}}})
	if !strings.HasPrefix(add.GetAdd().GetInstancePath(), "Device.LocalAgent.Subscription.") {
		t.Fatalf("add result: %v", add)
	}

	var mu sync.Mutex
	var changes []*duetv1.Parameter
	sub, err := b.Conn().Subscribe(bus.EventSubject(devicemodel.ProtocolUSP, eid, "value_change"), func(m *nats.Msg) {
		ev := &duetv1.Event{}
		if proto.Unmarshal(m.Data, ev) == nil {
			mu.Lock()
			changes = append(changes, ev.GetValueChange().GetParams()...)
			mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	newSSID := "duet-" + bus.NewID()[:6]
	set := request(&duetv1.Command{Op: &duetv1.Command_Set{Set: &duetv1.SetRequest{
		Params: []*duetv1.Parameter{{Path: "Device.WiFi.SSID.1.SSID", Value: newSSID}},
	}}})
	if len(set.GetSet().GetUpdated()) == 0 {
		t.Fatalf("set result lists nothing updated: %v", set)
	}
	bustest.CheckFor(t, 20*time.Second, 50*time.Millisecond, func() error {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range changes {
			if p.Path == "Device.WiFi.SSID.1.SSID" && p.Value == newSSID {
				return nil
			}
		}
		return fmt.Errorf("no value_change event with the new SSID yet (%d seen)", len(changes))
	})
	get := request(&duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{"Device.WiFi.SSID.1.SSID"}}}})
	if ps := get.GetGet().GetParams(); len(ps) != 1 || ps[0].Value != newSSID {
		t.Fatalf("read back %v, want %q", ps, newSSID)
	}
}
