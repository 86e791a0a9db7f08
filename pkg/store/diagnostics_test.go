package store_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

// TestDiagnosticsNewestFirst: a device's diagnostics list newest first,
// by kind, in keyset pages; recording a task twice keeps one row.
func TestDiagnosticsNewestFirst(t *testing.T) {
	st, _ := storetest.Open(t)
	ctx := t.Context()
	if err := st.ApplyObservations(ctx, []store.Observation{{EventID: "e1", Kind: "boot", Time: time.Now(), Payload: []byte{},
		Device: devicemodel.Device{ID: "dev-d", Protocol: devicemodel.ProtocolUSP}, Online: true}}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC)
	for i, k := range []string{"ping", "download", "ping"} {
		d := store.Diagnostic{TaskID: "t" + string(rune('1'+i)), DeviceID: "dev-d", Kind: k, Target: "x", Success: i != 2,
			StartedAt: t0, FinishedAt: t0.Add(time.Duration(i) * time.Minute), Result: json.RawMessage(`{"ping":{"success_count":1}}`)}
		if err := st.RecordDiagnostic(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	// A completion handled twice: one row, the last word.
	if err := st.RecordDiagnostic(ctx, store.Diagnostic{TaskID: "t3", DeviceID: "dev-d", Kind: "ping", Success: false, Status: "Error_Other",
		StartedAt: t0, FinishedAt: t0.Add(2 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	all, err := st.FindDiagnostics(ctx, store.DiagnosticFilter{DeviceID: "dev-d"})
	if err != nil || len(all) != 3 || all[0].TaskID != "t3" || all[0].Status != "Error_Other" || all[2].TaskID != "t1" {
		t.Fatalf("all: %+v %v", all, err)
	}
	pings, err := st.FindDiagnostics(ctx, store.DiagnosticFilter{DeviceID: "dev-d", Kind: "ping", Limit: 1})
	if err != nil || len(pings) != 1 || pings[0].TaskID != "t3" {
		t.Fatalf("page 1: %+v %v", pings, err)
	}
	pings, err = st.FindDiagnostics(ctx, store.DiagnosticFilter{DeviceID: "dev-d", Kind: "ping", Limit: 1, BeforeTime: pings[0].FinishedAt, BeforeID: pings[0].TaskID})
	if err != nil || len(pings) != 1 || pings[0].TaskID != "t1" || string(pings[0].Result) != `{"ping": {"success_count": 1}}` {
		t.Fatalf("page 2: %+v %v", pings, err)
	}
}
