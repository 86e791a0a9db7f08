package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// cachedParams returns the paths and values of a device's parameter cache
// under prefix.
func (d *duet) cachedParams(dev, prefix string) map[string]string {
	d.t.Helper()
	return d.cachedParamsQuery(dev, "path="+url.QueryEscape(prefix))
}

func (d *duet) cachedParamsQuery(dev, query string) map[string]string {
	d.t.Helper()
	code, body := d.get("/api/v1/devices/" + url.PathEscape(dev) + "/parameters?" + query)
	if code != 200 {
		d.t.Fatalf("parameters of %s: %d %s", dev, code, body)
	}
	var pl struct {
		Parameters []struct {
			Path, Value string
		} `json:"parameters"`
	}
	if err := json.Unmarshal([]byte(body), &pl); err != nil {
		d.t.Fatal(err)
	}
	out := map[string]string{}
	for _, p := range pl.Parameters {
		out[p.Path] = p.Value
	}
	return out
}

// searchIDs returns the IDs GET /api/v1/devices answers for query.
func (d *duet) searchIDs(query string) []string {
	d.t.Helper()
	code, body := d.get("/api/v1/devices?" + query)
	if code != 200 {
		d.t.Fatalf("search %s: %d %s", query, code, body)
	}
	var res struct {
		Devices []struct {
			ID string `json:"id"`
		} `json:"devices"`
	}
	if err := json.Unmarshal([]byte(body), &res); err != nil {
		d.t.Fatal(err)
	}
	var ids []string
	for _, dv := range res.Devices {
		ids = append(ids, dv.ID)
	}
	return ids
}

// eventsDrained waits until the controller's registry consumer has
// applied (and acknowledged) every event in the stream: after it, nothing
// late can still change the cache.
func (d *duet) eventsDrained(timeout time.Duration) {
	d.t.Helper()
	nc, err := natsConnect(d.Env)
	if err != nil {
		d.t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		d.t.Fatal(err)
	}
	bustest.CheckFor(d.t, timeout, 20*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := controllerConsumer(ctx, js)
		if err != nil {
			return err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("registry behind: %d pending, %d unacknowledged", info.NumPending, info.NumAckPending)
		}
		return nil
	})
}

// TestFirstContactIsCached (issue 12 item 1): what a device's first
// contact reported — the first Inform of a CPE that bootstraps, the
// DeviceInfo an agent is onboarded with — is in the parameter cache and
// found by a param search at once, not only after its next periodic
// Inform. The bootstrap that comes with it forgets only what was known
// before.
func TestFirstContactIsCached(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)

	t.Run("cwmp", func(t *testing.T) {
		c, err := cpe.New(cpe.Options{ACSURL: "http://" + env["DUET_CWMP_ADDR"] + "/", DataModelPath: cwmpModels[0].path,
			OUI: "00D09E", ProductClass: "FIRST", Serial: "FC1", SoftwareVersion: "fc-7.1.3",
			PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		dev := c.DeviceID()
		d.waitDevice(dev)
		d.eventsDrained(30 * time.Second)
		if got := d.cachedParams(dev, "Device.DeviceInfo.SoftwareVersion"); got["Device.DeviceInfo.SoftwareVersion"] != "fc-7.1.3" {
			t.Fatalf("cache after the first (bootstrap) Inform: %v", got)
		}
		ids := d.searchIDs("param=" + url.QueryEscape("Device.DeviceInfo.SoftwareVersion:eq:fc-7.1.3"))
		if len(ids) != 1 || ids[0] != dev {
			t.Fatalf("param search found %v, want [%s]", ids, dev)
		}
		// HardwareVersion is a default search path (DUET_SEARCH_PATHS):
		// the Inform's value is in its index at once.
		hw := d.cachedParams(dev, "Device.DeviceInfo.HardwareVersion")["Device.DeviceInfo.HardwareVersion"]
		if hw == "" {
			t.Fatal("no HardwareVersion cached from the Inform")
		}
		ids = d.searchIDs("param=" + url.QueryEscape("Device.DeviceInfo.HardwareVersion:eq:"+hw))
		if len(ids) != 1 || ids[0] != dev {
			t.Fatalf("search on a search path found %v, want [%s]", ids, dev)
		}
	})
	t.Run("usp", func(t *testing.T) {
		a, _ := startAgent(t, env, "FCU1")
		dev := a.EndpointID()
		d.waitOnline(dev, true)
		d.eventsDrained(30 * time.Second)
		bustest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
			// Onboarding ends with the bootstrap; the DeviceInfo read
			// for it must survive.
			if got := d.cachedParams(dev, "Device.DeviceInfo."); got["Device.DeviceInfo.SerialNumber"] != "FCU1" {
				return fmt.Errorf("cache after onboarding: %v", got)
			}
			return nil
		})
		ids := d.searchIDs("param=" + url.QueryEscape("Device.DeviceInfo.SerialNumber:eq:FCU1"))
		if len(ids) != 1 || ids[0] != dev {
			t.Fatalf("param search found %v, want [%s]", ids, dev)
		}
	})
}

// TestDeletedInstanceStaysDeleted (issue 12 item 2): add an instance,
// read it, delete it, many times on one device; once the controller has
// applied every event, the cache holds exactly what the device holds under
// the table. A Get result applied late must not bring back what the
// Delete removed.
func TestDeletedInstanceStaysDeleted(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	const rounds = 20

	run := func(t *testing.T, dev string, onDevice func(string) (string, bool), late func(inst string, at time.Time)) {
		for i := range rounds {
			add := d.runTask(dev, `{"operation":"add","object_path":"Device.NAT.PortMapping.","params":[{"path":"Alias","value":"gd-`+fmt.Sprint(i)+`"}]}`)
			var ar struct {
				Add struct {
					InstancePath string `json:"instance_path"`
				} `json:"add"`
			}
			if err := json.Unmarshal(add.Result, &ar); err != nil || ar.Add.InstancePath == "" {
				t.Fatalf("add result %s", add.Result)
			}
			inst := ar.Add.InstancePath
			readAt := time.Now()
			// Read it (refresh: a live Get, waited for), then delete it.
			if got := d.cachedParamsRefresh(dev, inst); got[inst+"Alias"] != fmt.Sprintf("gd-%d", i) {
				t.Fatalf("round %d: refreshed %s: %v", i, inst, got)
			}
			d.runTask(dev, `{"operation":"delete","object_paths":["`+inst+`"]}`)
			if _, ok := onDevice(inst + "Alias"); ok {
				t.Fatalf("round %d: %s still on the device", i, inst)
			}
			if late != nil {
				late(inst, readAt)
			}
			d.eventsDrained(30 * time.Second)
			if got := d.cachedParams(dev, inst); len(got) != 0 {
				t.Fatalf("round %d: %s deleted on the device, but the cache has %d rows of it: %v", i, inst, len(got), got)
			}
		}
	}
	t.Run("cwmp", func(t *testing.T) {
		c := startCPE(t, "http://"+env["DUET_CWMP_ADDR"]+"/", "GD1")
		d.waitDevice(c.DeviceID())
		run(t, c.DeviceID(), c.Value, nil)
	})
	t.Run("usp", func(t *testing.T) {
		a, _ := startAgent(t, env, "GDU1")
		d.waitOnline(a.EndpointID(), true)
		b := connectEmbeddedBus(t, env)
		// An agent's ValueChange of the instance, observed while it was
		// read and delivered only after the Delete (a Notify retried, a
		// slow broker): it is older than the deletion and must not bring
		// the instance back.
		late := func(inst string, at time.Time) {
			ev := &duetv1.Event{Time: timestamppb.New(at),
				Device: &duetv1.DeviceIdentity{Id: a.EndpointID(), Protocol: duetv1.Protocol_PROTOCOL_USP},
				Kind: &duetv1.Event_ValueChange{ValueChange: &duetv1.ValueChange{Params: []*duetv1.Parameter{
					{Path: inst + "Enable", Value: "true"}}}}}
			if err := b.PublishEvent(context.Background(), ev); err != nil {
				t.Fatal(err)
			}
		}
		run(t, a.EndpointID(), a.Parameter, late)
	})
}

// cachedParamsRefresh is cachedParams with refresh=true (a live read).
func (d *duet) cachedParamsRefresh(dev, prefix string) map[string]string {
	d.t.Helper()
	return d.cachedParamsQuery(dev, "refresh=true&path="+url.QueryEscape(prefix))
}
