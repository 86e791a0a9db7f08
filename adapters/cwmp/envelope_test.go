package cwmp

import (
	"bytes"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/cwmp"
)

// TestRejectedEnvelopes: an envelope in another namespace (SOAP 1.2, made
// up, a cwmp namespace that is not urn:dslforum-org:cwmp-1-*) or with data
// after it is answered 400 with a counted reason, and its device is not
// registered (issue 11 item 7). Before, all of these were answered 200
// and the device went online.
func TestRejectedEnvelopes(t *testing.T) {
	e := newEnv(t, nil)
	dir := "../../testdata/cwmp/rejected"
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{"envelope_namespace": "envelope_namespace", "cwmp_namespace": "cwmp_namespace", "trailing": "trailing_data"}
	for _, ent := range ents {
		body, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		prefix, _, _ := strings.Cut(ent.Name(), "__")
		reason := reasons[prefix]
		before := testutil.ToFloat64(metricBadRequests.WithLabelValues(reason))
		resp, err := http.Post(e.url, "text/xml", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d (%s), want 400", ent.Name(), resp.StatusCode, msg)
		}
		if got := testutil.ToFloat64(metricBadRequests.WithLabelValues(reason)) - before; got != 1 {
			t.Errorf("%s: duet_cwmp_bad_requests_total{reason=%q} grew by %v, want 1", ent.Name(), reason, got)
		}
	}
	// A good Inform after them is a fence: its online event comes after
	// any event the bad ones could have caused.
	good := newCPE(t, e.url, "Device.", "G1", true, false)
	if resp, _ := good.post(good.inform(cwmp.EventPeriodic)); resp.StatusCode != http.StatusOK {
		t.Fatal(resp.Status)
	}
	e.waitEvent("inform", good.id(), nil)
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, ev := range e.evs {
		if id := ev.GetDevice().GetId(); id != good.id() {
			t.Errorf("event %s for %s from a rejected envelope", bus.EventKind(ev), id)
		}
	}
}
