package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

type apiEnrolment struct {
	State         string     `json:"state"`
	Reason        string     `json:"reason"`
	TaskID        string     `json:"task_id"`
	SetAcceptedAt *time.Time `json:"set_accepted_at"`
	OldSessions   int        `json:"old_sessions"`
	Enabled       bool       `json:"enabled"`
}

func (d *duet) enrolment(dev string) apiEnrolment {
	d.t.Helper()
	code, out := d.get("/api/v1/devices/" + url.PathEscape(dev) + "/credentials/enrolment")
	var e apiEnrolment
	if code != 200 || json.Unmarshal([]byte(out), &e) != nil {
		d.t.Fatalf("GET enrolment of %s: %d %s", dev, code, out)
	}
	return e
}

// session runs a get task on dev, which wakes it by a connection request
// (its periodic inform is an hour away), and waits for it to succeed.
func (d *duet) session(dev string) {
	d.t.Helper()
	_, tk := d.postTask(dev, `{"operation":"get","paths":["Device.DeviceInfo.SoftwareVersion"]}`)
	d.waitTask(tk.ID, "succeeded", 2*time.Minute)
}

// TestCWMPEnrol runs the binary in the shared mode with enrolment on
// (DUET_CWMP_ENROL=auto and a credentials key): a CPE that bootstraps with
// the shared password is given its own, authenticates with it from its
// next session, is then refused the shared one, and takes connection
// requests with its new connection-request password. A CPE that accepts
// the Set but keeps its old password is rolled back after
// DUET_CWMP_ENROL_OLD_SESSIONS sessions and keeps working on shared; one
// that faults the Set fails at once. The API shows each state, never a
// secret, and an admin can start an enrolment again.
func TestCWMPEnrol(t *testing.T) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	const sharedPass, crUser, crPass = "Shared-Passw0rd-enrol", "cr-shared", "cr-Shared-Passw0rd"
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_CWMP_AUTH"] = "shared"
	env["DUET_CWMP_USERNAME"] = "acs-user"
	env["DUET_CWMP_PASSWORD"] = sharedPass
	env["DUET_CWMP_CONNREQ_USERNAME"] = crUser
	env["DUET_CWMP_CONNREQ_PASSWORD"] = crPass
	env["DUET_CREDENTIALS_KEY"] = base64.StdEncoding.EncodeToString(key)
	env["DUET_CWMP_ENROL_OLD_SESSIONS"] = "2"
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"

	newCPE := func(serial, failure string, bootstrapped bool) *cpe.CPE {
		t.Helper()
		c, err := cpe.New(cpe.Options{ACSURL: acs, DataModelPath: cwmpModels[0].path, OUI: "00D09E", ProductClass: "ENROL",
			Serial: serial, Username: "acs-user", Password: sharedPass, ConnReqUsername: crUser, ConnReqPassword: crPass,
			CredentialsFailure: failure, Bootstrapped: bootstrapped,
			PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	good := newCPE("GOOD", "", false)
	ignore := newCPE("IGNORE", "ignore", false)
	refuse := newCPE("FAULT", "fault", false)
	for _, c := range []*cpe.CPE{good, ignore, refuse} {
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*cpe.CPE{good, ignore, refuse} {
		d.waitDevice(c.DeviceID())
	}

	// The bootstrap session (or, on a slow machine, the next) carries the
	// Set; the CPE uses its new password from the session after.
	var e apiEnrolment
	bustest.CheckFor(t, 3*time.Minute, 200*time.Millisecond, func() error {
		if e = d.enrolment(good.DeviceID()); e.State != "enrolled" {
			if e.SetAcceptedAt != nil || e.State == "shared" {
				d.session(good.DeviceID())
			}
			return fmt.Errorf("good CPE: %+v", e)
		}
		return nil
	})
	if !e.Enabled || e.TaskID == "" {
		t.Fatalf("enrolment status %+v", e)
	}
	user, pass := good.ACSCredentials()
	cru, crp := good.ConnReqCredentials()
	if user != "acs-user" || pass == sharedPass || len(pass) < 20 || cru == crUser || crp == crPass || len(crp) < 20 {
		t.Fatalf("the CPE was not given new credentials: user %q, connection-request user %q", user, cru)
	}
	// The Set is a task in the list, by the system actor, with no secret.
	tk := d.getTask(e.TaskID)
	if tk.State != "succeeded" {
		t.Fatalf("enrolment task %+v", tk)
	}
	_, body := d.get("/api/v1/tasks/" + e.TaskID)
	if !strings.Contains(body, "system:cwmp-enrolment") || !strings.Contains(body, "ManagementServer.Password") {
		t.Fatalf("enrolment task does not show its actor and parameters: %s", body)
	}

	// Its own credentials work for connection requests and sessions.
	crBefore := good.Stats().ConnectionRequests
	failedBefore := good.Stats().FailedSessions
	d.session(good.DeviceID())
	if good.Stats().ConnectionRequests <= crBefore {
		t.Fatal("the enrolled CPE accepted no connection request")
	}
	if n := good.Stats().FailedSessions; n != failedBefore {
		t.Fatalf("the enrolled CPE had %d failed sessions", n-failedBefore)
	}

	// The shared password is refused for it now: an impostor with its
	// identity and the shared password gets nowhere.
	impostor, err := cpe.New(cpe.Options{ACSURL: acs, DataModelPath: cwmpModels[0].path, OUI: "00D09E", ProductClass: "ENROL",
		Serial: "GOOD", Username: "acs-user", Password: sharedPass, DisableConnReq: true, Bootstrapped: true,
		PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = impostor.Close() })
	if err := impostor.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, time.Minute, 100*time.Millisecond, func() error {
		if s := impostor.Stats(); s.FailedSessions < 2 || s.Informs > 0 {
			return fmt.Errorf("the shared password was not refused for an enrolled device: %+v", s)
		}
		return nil
	})
	_ = impostor.Close()

	// The CPE that ignores the Set: the connection request falls back to
	// the shared connection-request credentials, and after two sessions
	// on the old password the enrolment is rolled back.
	bustest.CheckFor(t, 3*time.Minute, 200*time.Millisecond, func() error {
		if e = d.enrolment(ignore.DeviceID()); e.State != "failed" {
			d.session(ignore.DeviceID())
			return fmt.Errorf("ignoring CPE: %+v", e)
		}
		return nil
	})
	if !strings.Contains(e.Reason, "kept authenticating with its old") {
		t.Fatalf("rollback reason: %+v", e)
	}
	if u, p := ignore.ACSCredentials(); u != "acs-user" || p != sharedPass {
		t.Fatal("the ignoring CPE changed its password after all")
	}
	d.session(ignore.DeviceID()) // still works on shared

	// The CPE that faults the Set fails at once, with the fault.
	bustest.CheckFor(t, 3*time.Minute, 200*time.Millisecond, func() error {
		if e = d.enrolment(refuse.DeviceID()); e.State != "failed" {
			if e.State == "shared" {
				d.session(refuse.DeviceID())
			}
			return fmt.Errorf("faulting CPE: %+v", e)
		}
		return nil
	})
	if !strings.Contains(e.Reason, "9001") {
		t.Fatalf("fault reason: %+v", e)
	}
	d.session(refuse.DeviceID())

	if n := d.metric(`duet_cwmp_enrolments_total{outcome="enrolled"}`); n < 1 {
		t.Fatalf("enrolled metric %v", n)
	}
	if n := d.metric(`duet_cwmp_enrolments_total{outcome="failed"}`); n < 2 {
		t.Fatalf("failed metric %v", n)
	}

	// An admin starts it again; the enrolled device cannot be.
	path := "/api/v1/devices/" + url.PathEscape(ignore.DeviceID()) + "/credentials/enrolment"
	if code, out := d.do("POST", path, ""); code != 202 || !strings.Contains(out, `"state":"pending"`) {
		t.Fatalf("POST enrolment: %d %s", code, out)
	}
	path = "/api/v1/devices/" + url.PathEscape(good.DeviceID()) + "/credentials/enrolment"
	if code, out := d.do("POST", path, ""); code != 409 {
		t.Fatalf("POST enrolment of an enrolled device: %d %s", code, out)
	}

	// No new secret anywhere: the API (tasks, audit log) and the log.
	secrets := []string{pass, crp}
	for _, p := range []string{"/api/v1/devices/" + url.PathEscape(good.DeviceID()) + "/tasks",
		"/api/v1/audit?limit=500", "/api/v1/devices/" + url.PathEscape(good.DeviceID()) + "/parameters?reveal=true"} {
		code, out := d.get(p)
		if code != 200 {
			t.Fatalf("GET %s: %d %s", p, code, out)
		}
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Fatalf("GET %s shows a new secret: %s", p, out)
			}
		}
	}
	for _, s := range secrets {
		if strings.Contains(d.out.String(), s) {
			t.Fatal("the server's output holds a new secret")
		}
	}
}
