package cpe

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/cwmp"
)

// minimalACS answers every Inform and ends the session: the cheapest ACS,
// so that a fleet's memory is the simulator's own.
func minimalACS(tb testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := cwmp.ReadBody(r.Body, r.Header.Get("Content-Encoding"), 0)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		env, err := cwmp.Decode(body, r.Header.Get("Content-Type"))
		if err != nil || env.IsEmpty() {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		out, err := cwmp.Encode(&cwmp.Envelope{Namespace: env.Namespace, Header: cwmp.Header{ID: env.Header.ID}, Body: &cwmp.InformResponse{MaxEnvelopes: 1}})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", cwmp.ContentType)
		w.Write(out)
	}))
	tb.Cleanup(srv.Close)
	return srv
}

// BenchmarkFleetMemory reports the simulator's memory per idle CPE (heap
// and goroutine stacks after a GC) once every CPE of a 10,000-CPE fleet
// has informed once: what duet-sim needs per CPE between periodic informs.
//
//	go test -run '^$' -bench FleetMemory -benchtime 1x ./pkg/sim/cpe
func BenchmarkFleetMemory(b *testing.B) {
	const n = 10000
	acs := minimalACS(b)
	for i := 0; i < b.N; i++ {
		before := inUse()
		f, err := NewFleet(FleetOptions{N: n, SerialPrefix: "MEM", Template: Options{
			ACSURL: acs.URL, DataModelPath: tr181Path, DisableConnReq: true, PeriodicInterval: time.Hour}})
		if err != nil {
			b.Fatal(err)
		}
		if err := f.Start(context.Background()); err != nil {
			b.Fatal(err)
		}
		for f.Stats().Sessions < n {
			time.Sleep(100 * time.Millisecond)
		}
		b.ReportMetric(float64(inUse()-before)/n/1024, "KB/CPE")
		f.Stop()
	}
}

// inUse is heap plus stack memory in use after a full GC.
func inUse() int64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse + ms.StackInuse)
}
