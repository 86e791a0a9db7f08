package cwmp

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestSimulatedCPE runs the ACS against pkg/sim/cpe, an independent CPE
// implementation, for both data models: Digest auth, a partial-path Get,
// cookie-less and connection-per-POST CPEs, and a connection request that
// wakes the CPE into a "6 CONNECTION REQUEST" session.
func TestSimulatedCPE(t *testing.T) {
	for _, tc := range []struct {
		name, dm, root string
		ignoreCookies  bool
		newConnPerPOST bool
	}{
		{"tr181 cookie-less", "tr181.json", "Device.", true, false},
		{"tr098 connection per POST", "tr098.json", "InternetGatewayDevice.", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, sharedAuth)
			e.queue(&duetv1.Command{Id: "get", Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{tc.root + "DeviceInfo."}}}})
			sim, err := cpe.New(cpe.Options{
				ACSURL: e.url, DataModelPath: "../../testdata/datamodel/" + tc.dm, Serial: "SIM1",
				Username: "acs", Password: testPassword, ConnReqUsername: "cr", ConnReqPassword: "crpw",
				IgnoreCookies: tc.ignoreCookies, NewConnectionPerPOST: tc.newConnPerPOST,
				PeriodicInterval: time.Hour, RetryMinWait: 50 * time.Millisecond,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := sim.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sim.Close() })
			id := sim.DeviceID()
			e.waitEvent("bootstrap", id, nil)
			var res *duetv1.CommandResult
			bustest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
				for _, r := range e.workRequests() {
					for _, x := range r.Results {
						if x.CommandId == "get" {
							res = x
							return nil
						}
					}
				}
				return errorf("no result yet")
			})
			found := false
			for _, p := range res.GetGet().GetParams() {
				if p.Path == tc.root+"DeviceInfo.ModelName" && p.Value != "" {
					found = true
				}
			}
			if res.Error != nil || !found {
				t.Fatalf("get result %v", res)
			}
			inf := e.waitEvent("inform", id, nil)
			if inf.Device.DataModel != tc.root || inf.Reachability.ConnectionRequestUrl != sim.ConnectionRequestURL() {
				t.Fatalf("identity %v reach %v", inf.Device, inf.Reachability)
			}

			// Wake it up. The CPE answers 503 while it is still closing the
			// first session (its empty POST may be in flight): that is a
			// busy CPE, asked again, as the task queue does.
			bustest.CheckFor(t, 10*time.Second, 100*time.Millisecond, func() error {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				cr, err := e.bus.Request(ctx, devicemodel.ProtocolCWMP, &duetv1.Command{DeviceId: id,
					Op: &duetv1.Command_ConnectionRequest{ConnectionRequest: &duetv1.ConnectionRequest{
						Url: sim.ConnectionRequestURL(), Username: "cr", Password: "crpw"}}})
				switch {
				case err != nil:
					t.Fatalf("connection request: %v", err)
				case cr.Error != nil && devicemodel.Code(cr.Error.Code) == devicemodel.CodeUnavailable:
					return errorf("connection request: %v", cr.Error)
				case cr.Error != nil:
					t.Fatalf("connection request: %v", cr)
				}
				return nil
			})
			e.waitEvent("inform", id, func(ev *duetv1.Event) bool {
				for _, c := range ev.GetInform().Events {
					if strings.HasPrefix(c.Code, "6 ") {
						return true
					}
				}
				return false
			})
		})
	}
}
