package e2e

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestCWMPPerDeviceCredentials runs the binary with per-device CPE auth:
// credentials stored through the API let the right CPE in and keep a CPE
// with a wrong password out, the API never shows a secret, and a task's
// connection request carries the stored connection-request credentials
// (the simulated CPE refuses any other with a 401).
func TestCWMPPerDeviceCredentials(t *testing.T) {
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	env := baseEnv(t, storetest.NewDatabase(t))
	env["DUET_CWMP_AUTH"] = "per-device"
	env["DUET_CREDENTIALS_KEY"] = base64.StdEncoding.EncodeToString(key)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acs := "http://" + env["DUET_CWMP_ADDR"] + "/"

	newCPE := func(serial, password string) *cpe.CPE {
		t.Helper()
		c, err := cpe.New(cpe.Options{ACSURL: acs, DataModelPath: cwmpModels[0].path, OUI: "00D09E", ProductClass: "CREDS",
			Serial: serial, Username: "cpe-" + serial, Password: password,
			ConnReqUsername: "cr-" + serial, ConnReqPassword: "cr-pass-" + serial,
			PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond, Bootstrapped: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	good := newCPE("GOOD1", "right-pass-GOOD1")
	bad := newCPE("BAD1", "wrong-pass")
	secrets := []string{"right-pass-GOOD1", "right-pass-BAD1", "cr-pass-GOOD1", "cr-pass-BAD1"}
	for _, c := range []*cpe.CPE{good, bad} {
		serial := strings.TrimPrefix(c.DeviceID(), "00D09E-CREDS-")
		body := fmt.Sprintf(`{"username":"cpe-%[1]s","password":"right-pass-%[1]s","connection_request_username":"cr-%[1]s","connection_request_password":"cr-pass-%[1]s"}`, serial)
		path := "/api/v1/devices/" + url.PathEscape(c.DeviceID()) + "/credentials"
		if code, out := d.do("PUT", path, body); code != 200 {
			t.Fatalf("PUT %s: %d %s", path, code, out)
		}
		code, out := d.get(path)
		if code != 200 || !strings.Contains(out, `"username":"cpe-`+serial+`"`) || !strings.Contains(out, `"has_connection_request_password":true`) {
			t.Fatalf("GET %s: %d %s", path, code, out)
		}
		for _, s := range secrets {
			if strings.Contains(out, s) {
				t.Fatalf("GET %s shows a secret: %s", path, out)
			}
		}
	}

	for _, c := range []*cpe.CPE{good, bad} {
		if err := c.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	d.waitDevice(good.DeviceID())
	bustest.CheckFor(t, 20*time.Second, 100*time.Millisecond, func() error {
		if bad.Stats().FailedSessions < 2 {
			return fmt.Errorf("the CPE with a wrong password has not been refused twice yet (%+v)", bad.Stats())
		}
		return nil
	})
	if code, _ := d.get("/api/v1/devices/" + url.PathEscape(bad.DeviceID())); code != 404 {
		t.Fatalf("a CPE with a wrong password registered (%d)", code)
	}

	// The task wakes the CPE by a connection request, which its listener
	// accepts only with cr-GOOD1 / cr-pass-GOOD1 (Digest); the periodic
	// inform is an hour away, so nothing else can start the session.
	crBefore := good.Stats().ConnectionRequests
	task := d.runTask(good.DeviceID(), `{"operation":"get","paths":["Device.DeviceInfo.SoftwareVersion"]}`)
	if task.State != "succeeded" {
		t.Fatalf("task %+v", task)
	}
	if n := good.Stats().ConnectionRequests; n <= crBefore {
		t.Fatalf("the CPE accepted no connection request (%d)", n)
	}

	// Deleting them leaves nothing behind.
	path := "/api/v1/devices/" + url.PathEscape(good.DeviceID()) + "/credentials"
	if code, out := d.do("DELETE", path, ""); code != 204 {
		t.Fatalf("DELETE: %d %s", code, out)
	}
	if code, _ := d.get(path); code != 404 {
		t.Fatalf("GET after DELETE: %d", code)
	}
	for _, s := range secrets {
		if strings.Contains(d.out.String(), s) {
			t.Fatalf("the server's output holds the secret %q", s)
		}
	}
}

// TestCredentialsWithoutKey: with DUET_CREDENTIALS_KEY unset the
// credentials API says what to set; a bad key stops start-up naming it.
func TestCredentialsWithoutKey(t *testing.T) {
	dbURL := storetest.NewDatabase(t)
	env := baseEnv(t, dbURL)
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	code, out := d.do("PUT", "/api/v1/devices/00D09E-X-Y/credentials",
		`{"username":"u","password":"p","connection_request_username":"c","connection_request_password":"q"}`)
	if code != 503 || !strings.Contains(out, `"unavailable"`) || !strings.Contains(out, "DUET_CREDENTIALS_KEY") {
		t.Fatalf("PUT without a key: %d %s", code, out)
	}

	env = baseEnv(t, dbURL)
	env["DUET_CREDENTIALS_KEY"] = "dG9vLXNob3J0"
	bad := startDuet(t, env, "serve")
	if code := bad.wait(30 * time.Second); code == 0 {
		t.Fatal("started with a 9-byte credentials key")
	}
	if !strings.Contains(bad.out.String(), "DUET_CREDENTIALS_KEY") || strings.Contains(bad.out.String(), "dG9vLXNob3J0") {
		t.Fatalf("start-up error does not name DUET_CREDENTIALS_KEY, or echoes the key:\n%s", bad.out.String())
	}
}
