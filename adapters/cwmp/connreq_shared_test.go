package cwmp

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestSharedConnectionRequestCredentials: a CPE that protects its
// connection-request URL refused Duet's requests when no per-device
// credentials were stored (issue 15 §6). With ConnReqUsername/Password
// the adapter answers its challenge with the shared ones; credentials the
// controller sends (the device's own) still win.
func TestSharedConnectionRequestCredentials(t *testing.T) {
	const user, pass = "cr-fleet", "cr-Fleet-pass-9"
	startSim := func(t *testing.T, e *env, serial string) *cpe.CPE { return startConnReqSim(t, e, serial, user, pass) }
	request := requestConnReq

	t.Run("without shared credentials the CPE refuses", func(t *testing.T) {
		e := newEnv(t, nil)
		sim := startSim(t, e, "CRS0")
		res := request(t, e, sim, &duetv1.ConnectionRequest{Url: sim.ConnectionRequestURL()})
		if res.Error == nil || devicemodel.Code(res.Error.Code) != devicemodel.CodeUnauthenticated {
			t.Fatalf("result %v, want unauthenticated", res)
		}
	})
	t.Run("shared credentials", func(t *testing.T) {
		e := newEnv(t, func(o *Options) { o.ConnReqUsername, o.ConnReqPassword = user, pass })
		sim := startSim(t, e, "CRS1")
		if res := request(t, e, sim, &duetv1.ConnectionRequest{Url: sim.ConnectionRequestURL()}); res.Error != nil {
			t.Fatalf("result %v", res)
		}
		e.waitEvent("inform", sim.DeviceID(), func(ev *duetv1.Event) bool {
			for _, c := range ev.GetInform().Events {
				if c.Code == "6 CONNECTION REQUEST" {
					return true
				}
			}
			return false
		})
		// The device's own credentials, when the controller has them, win.
		res := request(t, e, sim, &duetv1.ConnectionRequest{Url: sim.ConnectionRequestURL(), Username: "own", Password: "wrong-own"})
		if res.Error == nil || devicemodel.Code(res.Error.Code) != devicemodel.CodeUnauthenticated {
			t.Fatalf("per-device credentials not used: %v", res)
		}
	})
	if _, err := New(Options{Bus: newEnv(t, nil).bus, Auth: AuthNone, ConnReqUsername: "x"}); err == nil {
		t.Error("ConnReqUsername without ConnReqPassword accepted")
	}
}

// startConnReqSim starts a simulated CPE whose connection-request URL wants
// user/pass, and waits for its bootstrap.
func startConnReqSim(t *testing.T, e *env, serial, user, pass string) *cpe.CPE {
	t.Helper()
	sim, err := cpe.New(cpe.Options{
		ACSURL: e.url, DataModelPath: "../../testdata/datamodel/tr181.json", Serial: serial,
		ConnReqUsername: user, ConnReqPassword: pass,
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
	e.waitEvent("bootstrap", sim.DeviceID(), nil)
	return sim
}

// requestConnReq sends a connection request as the controller does,
// retrying while the CPE is still busy closing its first session (503).
func requestConnReq(t *testing.T, e *env, sim *cpe.CPE, cr *duetv1.ConnectionRequest) *duetv1.CommandResult {
	t.Helper()
	var res *duetv1.CommandResult
	bustest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		r, err := e.bus.Request(ctx, devicemodel.ProtocolCWMP, &duetv1.Command{DeviceId: sim.DeviceID(),
			Op: &duetv1.Command_ConnectionRequest{ConnectionRequest: cr}})
		if err != nil {
			t.Fatalf("connection request: %v", err)
		}
		if r.Error != nil && devicemodel.Code(r.Error.Code) == devicemodel.CodeUnavailable {
			return errorf("CPE busy: %v", r.Error)
		}
		res = r
		return nil
	})
	return res
}
