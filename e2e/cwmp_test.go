package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

type cwmpModel struct {
	path, oui, class, maker, sw, prefix string
}

var cwmpModels = []cwmpModel{
	{"../testdata/datamodel/tr181.json", "00D09E", "ONT181", "SimCo Device2", "181.1.0", "A"},
	{"../testdata/datamodel/tr098.json", "001122", "IGD098", "SimCo IGD", "098.2.0", "B"},
}

// TestCWMPFleetRegisters starts `duet serve` and 100 simulated CPEs, half
// TR-181 and half TR-098, authenticating with the shared Digest
// credentials; every one appears in GET /api/v1/devices with its identity.
func TestCWMPFleetRegisters(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_CWMP_AUTH"] = "shared"
	env["DUET_CWMP_USERNAME"] = "acs-user"
	env["DUET_CWMP_PASSWORD"] = "s3cret-" + bus.NewID()[:6]
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acsURL := "http://" + env["DUET_CWMP_ADDR"] + "/"

	const perModel = 50
	want := map[string]cwmpModel{}
	for _, m := range cwmpModels {
		fleet, err := cpe.NewFleet(cpe.FleetOptions{N: perModel, SerialPrefix: m.prefix + "SN", Template: cpe.Options{
			ACSURL: acsURL, DataModelPath: m.path, OUI: m.oui, ProductClass: m.class,
			Manufacturer: m.maker, SoftwareVersion: m.sw,
			Username: env["DUET_CWMP_USERNAME"], Password: env["DUET_CWMP_PASSWORD"],
			PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond,
		}})
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range fleet.CPEs() {
			want[c.DeviceID()] = m
		}
		if err := fleet.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(fleet.Stop)
	}

	bustest.CheckFor(t, 90*time.Second, 250*time.Millisecond, func() error {
		code, body := d.get("/api/v1/devices?protocol=cwmp&limit=1000")
		if code != 200 {
			return fmt.Errorf("list: %d %s", code, body)
		}
		var list struct {
			Devices []map[string]any `json:"devices"`
		}
		if err := json.Unmarshal([]byte(body), &list); err != nil {
			return err
		}
		seen := 0
		for _, dev := range list.Devices {
			m, ok := want[dev["id"].(string)]
			if !ok {
				continue
			}
			if dev["manufacturer"] != m.maker || dev["oui"] != m.oui || dev["product_class"] != m.class ||
				dev["software_version"] != m.sw || !strings.HasPrefix(dev["serial_number"].(string), m.prefix+"SN") ||
				dev["online"] != true {
				return fmt.Errorf("device %v does not carry its identity (want %+v)", dev, m)
			}
			root := "Device."
			if m.class == "IGD098" {
				root = "InternetGatewayDevice."
			}
			if dev["data_model"] != root {
				return fmt.Errorf("device %s data model %v, want %s", dev["id"], dev["data_model"], root)
			}
			seen++
		}
		if seen != len(want) {
			return fmt.Errorf("%d of %d CPEs registered", seen, len(want))
		}
		return nil
	})
}

// TestCWMPWrongPasswordIsRefused: a CPE with the wrong shared password never
// registers, and the refusal is counted.
func TestCWMPWrongPasswordIsRefused(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_CWMP_AUTH"] = "shared"
	env["DUET_CWMP_USERNAME"] = "acs-user"
	env["DUET_CWMP_PASSWORD"] = "right-Passw0rd"
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	c, err := cpe.New(cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", DataModelPath: cwmpModels[0].path,
		OUI: "00D09E", ProductClass: "BAD", Serial: "WRONGPW", Username: "acs-user", Password: "wrong-Passw0rd",
		RetryMinWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bustest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if c.Stats().FailedSessions < 2 {
			return fmt.Errorf("CPE has not been refused twice yet (%+v)", c.Stats())
		}
		return nil
	})
	if code, _ := d.get("/api/v1/devices/" + c.DeviceID()); code != 404 {
		t.Fatalf("a CPE with a wrong password registered (%d)", code)
	}
	if !strings.Contains(metricsText(d), "duet_cwmp_auth_failures_total") {
		t.Fatal("auth failures are not counted in /metrics")
	}
}

// TestCWMPConnectionRequestThroughBinary: a connection_request command sent
// on the bus of the running binary wakes a CPE, which opens a session with
// "6 CONNECTION REQUEST".
func TestCWMPConnectionRequestThroughBinary(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	c, err := cpe.New(cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", DataModelPath: cwmpModels[0].path,
		OUI: "00D09E", ProductClass: "CR", Serial: "WAKE1", ConnReqUsername: "cr", ConnReqPassword: "crpw",
		PeriodicInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bustest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if c.Stats().Sessions < 1 {
			return fmt.Errorf("no session yet")
		}
		return nil
	})
	b := connectEmbeddedBus(t, env)
	res, err := b.Request(context.Background(), devicemodel.ProtocolCWMP, &duetv1.Command{
		DeviceId: c.DeviceID(), Timeout: durationpb.New(5 * time.Second),
		Op: &duetv1.Command_ConnectionRequest{ConnectionRequest: &duetv1.ConnectionRequest{
			Url: c.ConnectionRequestURL(), Username: "cr", Password: "crpw"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Error != nil {
		t.Fatalf("connection request failed: %v", res.Error)
	}
	bustest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if s := c.Stats(); s.ConnectionRequests < 1 || s.Sessions < 2 {
			return fmt.Errorf("CPE not woken: %+v", s)
		}
		return nil
	})
}

func metricsText(d *duet) string {
	_, body := d.get("/metrics")
	return body
}
