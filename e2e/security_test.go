package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestPoisonDevicesDoNotStopTheFleet is issue 15 §1 end to end: a CPE
// informing a 6,000-character Manufacturer and a USP agent answering the
// onboarding Get with SoftwareVersion "v1\x00nul" used to stop the
// registry for every device, across restarts. Now both register with the
// bad fact left unknown, and every other device registers too.
func TestPoisonDevicesDoNotStopTheFleet(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	ctx := context.Background()
	acsURL := "http://" + env["DUET_CWMP_ADDR"] + "/"

	var long strings.Builder // incompressible, like a real attack
	for long.Len() < 6000 {
		long.WriteString(bus.NewID())
	}
	poisonCPE, err := cpe.New(cpe.Options{ACSURL: acsURL, DataModelPath: "../testdata/datamodel/tr181.json",
		OUI: "00D09E", ProductClass: "POISON", Serial: "LONG1", Manufacturer: long.String()[:6000], SoftwareVersion: "1.0",
		PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := poisonCPE.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = poisonCPE.Close() })
	ws := func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
		return agent.DialWebSocket(ctx, a, agent.WebSocketConfig{URL: "ws://" + env["DUET_WS_ADDR"] + "/usp"})
	}
	poisonAgent, err := agent.StartFleet(ctx, 1, func(int) agent.Config {
		return agent.Config{SerialNumber: "NUL1", SoftwareVersion: "v1\x00nul", ControllerID: controllerEID}
	}, ws)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { poisonAgent.Close() })

	good, err := cpe.NewFleet(cpe.FleetOptions{N: 5, SerialPrefix: "GOOD", Template: cpe.Options{
		ACSURL: acsURL, DataModelPath: "../testdata/datamodel/tr181.json", OUI: "00D09E", ProductClass: "ONT",
		Manufacturer: "SimCo", SoftwareVersion: "2.0", PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := good.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(good.Stop)
	goodAgents, err := agent.StartFleet(ctx, 3, func(i int) agent.Config {
		return agent.Config{SerialNumber: fmt.Sprintf("GOODUSP%d", i), SoftwareVersion: "3.0", ControllerID: controllerEID}
	}, ws)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { goodAgents.Close() })

	want := map[string]string{poisonCPE.DeviceID(): "poison-cpe", poisonAgent.Agents()[0].EndpointID(): "poison-agent"}
	for _, c := range good.CPEs() {
		want[c.DeviceID()] = "good-cpe"
	}
	for _, a := range goodAgents.Agents() {
		want[a.EndpointID()] = "good-agent"
	}
	bustest.CheckFor(t, 120*time.Second, 250*time.Millisecond, func() error {
		for id, kind := range want {
			code, body := d.get("/api/v1/devices/" + url.PathEscape(id))
			if code != 200 {
				return fmt.Errorf("%s (%s): %d", id, kind, code)
			}
			var dev map[string]any
			if err := json.Unmarshal([]byte(body), &dev); err != nil {
				return err
			}
			switch kind {
			case "poison-cpe":
				if dev["manufacturer"] != "" || dev["software_version"] != "1.0" {
					return fmt.Errorf("%s: %v", kind, dev)
				}
			case "poison-agent":
				// Onboarding's Get brings the DeviceInfo; the bad version is dropped.
				if dev["model_name"] == "" || dev["software_version"] != "" {
					return fmt.Errorf("%s: %v", kind, dev)
				}
			case "good-cpe":
				if dev["manufacturer"] != "SimCo" || dev["software_version"] != "2.0" {
					return fmt.Errorf("%s: %v", kind, dev)
				}
			case "good-agent":
				if dev["software_version"] != "3.0" {
					return fmt.Errorf("%s: %v", kind, dev)
				}
			}
		}
		return nil
	})
	if n := d.metric(`duet_bus_event_fields_refused_total{field="device.manufacturer",reason="too_long"}`); n < 1 {
		t.Errorf("manufacturer refusals counted %v", n)
	}
	if n := d.metric(`duet_bus_event_fields_refused_total{field="device.software_version",reason="nul"}`); n < 1 {
		t.Errorf("software version refusals counted %v", n)
	}
}
