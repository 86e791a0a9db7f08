package cwmp

import (
	"context"
	"net/http"
	"testing"

	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestAuthEnrolment: in the shared mode with Enrol, the adapter asks the
// controller for each device's credentials (docs/guide-cwmp.md,
// "Enrolment"): during an enrolment both the shared and the pending
// credentials are accepted, and the session's first work request says
// which was used (and whether it bootstrapped); an enrolled device is
// refused the shared ones; credentials stored through the API but not
// enrolled do not replace the shared ones.
func TestAuthEnrolment(t *testing.T) {
	e := newEnv(t, func(o *Options) { sharedAuth(o); o.Enrol = true })
	creds, err := e.bus.ServeCredentials("", func(_ context.Context, id string) (*duetv1.Credentials, error) {
		switch id {
		case "00D09E-IGW-PEND":
			return &duetv1.Credentials{PendingUsername: "acs", PendingDigestHa1: ha1("acs", "Duet", "new-pass-1"), Realm: "Duet"}, nil
		case "00D09E-IGW-DONE":
			return &duetv1.Credentials{Found: true, Enrolled: true, Username: "acs", DigestHa1: ha1("acs", "Duet", "own-pass-2"), Realm: "Duet"}, nil
		case "00D09E-IGW-CONF":
			return &duetv1.Credentials{Found: true, Username: "conf", DigestHa1: ha1("conf", "Duet", "api-pass-3"), Realm: "Duet"}, nil
		}
		return &duetv1.Credentials{}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(creds.Stop)

	lastAuth := func(device string) *duetv1.SessionWorkRequest {
		t.Helper()
		var last *duetv1.SessionWorkRequest
		for _, r := range e.workRequests() {
			if r.GetDeviceId() == device && r.GetRound() == 0 {
				last = r
			}
		}
		if last == nil {
			t.Fatalf("no work request for %s", device)
		}
		return last
	}
	session := func(serial, user, pass string, events ...string) int {
		t.Helper()
		c := newCPE(t, e.url, "Device.", serial, true, false)
		c.user, c.pass = user, pass
		resp, _ := c.post(c.inform(events...))
		if resp.StatusCode != http.StatusOK {
			return resp.StatusCode
		}
		if resp, _ := c.post(nil); resp.StatusCode != http.StatusNoContent {
			t.Fatalf("empty POST: %d", resp.StatusCode)
		}
		return http.StatusOK
	}

	if code := session("PEND", "acs", testPassword, cwmp.EventBootstrap); code != 200 {
		t.Fatalf("pending device with the shared password: %d", code)
	}
	if r := lastAuth("00D09E-IGW-PEND"); r.GetAuth() != "shared" || !r.GetBootstrap() {
		t.Fatalf("work request %v, want auth shared and bootstrap", r)
	}
	if code := session("PEND", "acs", "new-pass-1", cwmp.EventPeriodic); code != 200 {
		t.Fatalf("pending device with the new password: %d", code)
	}
	if r := lastAuth("00D09E-IGW-PEND"); r.GetAuth() != "pending" || r.GetBootstrap() {
		t.Fatalf("work request %v, want auth pending", r)
	}
	if code := session("PEND", "acs", "wrong-pass", cwmp.EventPeriodic); code != http.StatusUnauthorized {
		t.Fatalf("pending device with a wrong password: %d", code)
	}

	if code := session("DONE", "acs", testPassword, cwmp.EventBootstrap); code != http.StatusUnauthorized {
		t.Fatalf("enrolled device with the shared password: %d, want 401", code)
	}
	if code := session("DONE", "acs", "own-pass-2", cwmp.EventPeriodic); code != 200 {
		t.Fatalf("enrolled device with its own password: %d", code)
	}
	if r := lastAuth("00D09E-IGW-DONE"); r.GetAuth() != "device" {
		t.Fatalf("work request %v, want auth device", r)
	}

	if code := session("CONF", "acs", testPassword, cwmp.EventPeriodic); code != 200 {
		t.Fatalf("configured device with the shared password: %d", code)
	}
	if code := session("CONF", "conf", "api-pass-3", cwmp.EventPeriodic); code != http.StatusUnauthorized {
		t.Fatalf("configured device's stored password used in the shared mode: %d", code)
	}
	// Any other device: the shared credentials, as without Enrol.
	if code := session("OTHER", "acs", testPassword, cwmp.EventPeriodic); code != 200 {
		t.Fatalf("other device: %d", code)
	}
}

// TestConnectionRequestFallback: during an enrolment the controller sends
// the new connection-request credentials with a fallback; a CPE that still
// has the old ones (here the shared ones) is reached on the second try.
func TestConnectionRequestFallback(t *testing.T) {
	const user, pass = "cr-fleet", "cr-Fleet-pass-9"
	e := newEnv(t, func(o *Options) { o.ConnReqUsername, o.ConnReqPassword = user, pass })
	sim := startConnReqSim(t, e, "CRF1", user, pass)
	res := requestConnReq(t, e, sim, &duetv1.ConnectionRequest{Url: sim.ConnectionRequestURL(),
		Username: "duet-new", Password: "new-cr-pass", Fallback: true})
	if res.Error != nil {
		t.Fatalf("fallback to the shared credentials: %v", res)
	}
	// Without the fallback the new credentials alone are refused.
	res = requestConnReq(t, e, sim, &duetv1.ConnectionRequest{Url: sim.ConnectionRequestURL(),
		Username: "duet-new", Password: "new-cr-pass"})
	if res.Error == nil || devicemodel.Code(res.Error.Code) != devicemodel.CodeUnauthenticated {
		t.Fatalf("result %v, want unauthenticated", res)
	}
	// An explicit fallback (the device's own old credentials).
	sim2 := startConnReqSim(t, e, "CRF2", "own-old", "own-old-pass")
	res = requestConnReq(t, e, sim2, &duetv1.ConnectionRequest{Url: sim2.ConnectionRequestURL(),
		Username: "duet-new", Password: "new-cr-pass", Fallback: true, FallbackUsername: "own-old", FallbackPassword: "own-old-pass"})
	if res.Error != nil {
		t.Fatalf("fallback to the old credentials: %v", res)
	}
}

// TestEachSessionAuthenticates: a new session on a kept-alive connection
// authenticates again (a device's credentials may have changed since, by
// an enrolment or an operator). Before, the connection's authentication
// carried over and the second Inform needed no credentials.
func TestEachSessionAuthenticates(t *testing.T) {
	e := newEnv(t, sharedAuth)
	c := newCPE(t, e.url, "Device.", "KA1", true, false)
	c.user, c.pass = "acs", testPassword
	c.session(c.inform(cwmp.EventPeriodic))
	c.user = "" // no answer to a challenge
	if resp, _ := c.post(c.inform(cwmp.EventPeriodic)); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("second session on the same connection without credentials: %d, want 401", resp.StatusCode)
	}
}
