package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/cpe"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestCWMPForeignEnvelopesRefused posts the envelopes of
// testdata/cwmp/rejected (SOAP 1.2, made-up namespaces, an Inform followed
// by <<<<garbage) to the binary's ACS: each is answered 400, counted by
// reason and logged, and none registers its device, while a simulated CPE
// next to them does (issue 11 item 7). Before, all were answered 200 and
// 00BAD0-NS-NS1 went online.
func TestCWMPForeignEnvelopesRefused(t *testing.T) {
	env := baseEnv(t, storetest.NewDatabase(t))
	d := startDuet(t, env, "serve")
	d.waitReady(30 * time.Second)
	acsURL := "http://" + env["DUET_CWMP_ADDR"] + "/"

	dir := "../testdata/cwmp/rejected"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	wantCount := map[string]float64{}
	reasons := map[string]string{"envelope_namespace": "envelope_namespace", "cwmp_namespace": "cwmp_namespace", "trailing": "trailing_data"}
	for _, e := range ents {
		body, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		prefix, _, _ := strings.Cut(e.Name(), "__")
		wantCount[reasons[prefix]]++
		res, err := http.Post(acsURL, "text/xml; charset=utf-8", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: %d %s, want 400", e.Name(), res.StatusCode, msg)
		}
	}
	for reason, n := range wantCount {
		if got := d.metric(`duet_cwmp_bad_requests_total{reason="` + reason + `"}`); got != n {
			t.Errorf("duet_cwmp_bad_requests_total{reason=%q} = %v, want %v", reason, got, n)
		}
		if !strings.Contains(d.out.String(), `"reason":"`+reason+`"`) {
			t.Errorf("no log line with reason %s", reason)
		}
	}

	// A real-looking CPE registers next to them.
	fleet, err := cpe.NewFleet(cpe.FleetOptions{N: 1, SerialPrefix: "GOODSN", Template: cpe.Options{
		ACSURL: acsURL, DataModelPath: cwmpModels[0].path, OUI: cwmpModels[0].oui, ProductClass: cwmpModels[0].class,
		Manufacturer: cwmpModels[0].maker, SoftwareVersion: cwmpModels[0].sw,
		PeriodicInterval: time.Hour, RetryMinWait: 200 * time.Millisecond,
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fleet.Stop)
	good := fleet.CPEs()[0].DeviceID()
	var ids []string
	bustest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		code, body := d.get("/api/v1/devices?limit=100")
		var list struct {
			Devices []struct {
				ID string `json:"id"`
			} `json:"devices"`
		}
		if code != 200 || json.Unmarshal([]byte(body), &list) != nil {
			return fmt.Errorf("list: %d %s", code, body)
		}
		ids = ids[:0]
		for _, dev := range list.Devices {
			ids = append(ids, dev.ID)
		}
		if len(ids) == 0 {
			return fmt.Errorf("no device yet")
		}
		return nil
	})
	if len(ids) != 1 || ids[0] != good {
		t.Fatalf("registered %v, want only %s", ids, good)
	}
}
