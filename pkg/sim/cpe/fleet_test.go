package cpe

import (
	"context"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/cwmp"
)

// minimalACS answers every Inform and ends the session: the cheapest ACS,
// so that a fleet's memory is the simulator's own.
func minimalACS(tb testing.TB) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(answerInform))
	tb.Cleanup(srv.Close)
	return srv
}

// answerInform answers an Inform with an InformResponse and anything else
// with 204: the session ends after the Inform.
func answerInform(w http.ResponseWriter, r *http.Request) {
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

// TestFleetRetriesRefusedSessions: an ACS refusing sessions (503, as one at
// its limits does) costs failed sessions that are counted and retried,
// never the fleet; and a Scheduler's limit bounds the sessions in flight.
func TestFleetRetriesRefusedSessions(t *testing.T) {
	const n, refusals, limit = 20, 15, 3
	var refused, inFlight, most atomic.Int64
	acs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cur := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := most.Load(); cur > m && !most.CompareAndSwap(m, cur); m = most.Load() {
		}
		if refused.Add(1) <= refusals {
			http.Error(w, "busy", http.StatusServiceUnavailable)
			return
		}
		answerInform(w, r)
	}))
	defer acs.Close()
	var observedErrors atomic.Int64
	f, err := NewFleet(FleetOptions{N: n, SerialPrefix: "RTY", Template: Options{
		ACSURL: acs.URL, DataModelPath: tr098Path, DisableConnReq: true, RetryMinWait: 20 * time.Millisecond,
		Scheduler: NewScheduler(limit),
		SessionObserver: func(_ time.Duration, err error) {
			if err != nil {
				observedErrors.Add(1)
			}
		}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer f.Stop()
	waitFor(t, "every CPE to inform", func() bool {
		for _, c := range f.CPEs() {
			if c.Stats().Sessions == 0 {
				return false
			}
		}
		return true
	})
	if s := f.Stats(); s.FailedSessions != refusals || observedErrors.Load() != refusals {
		t.Fatalf("failed sessions %d, observed errors %d, want %d", s.FailedSessions, observedErrors.Load(), refusals)
	}
	if m := most.Load(); m > limit {
		t.Fatalf("%d requests in flight at once, the Scheduler allows %d sessions", m, limit)
	}
}
