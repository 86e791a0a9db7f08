package controller_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/store/storetest"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// BenchmarkRegistryUpsertThroughBus measures registry upserts per second end
// to end: events published to JetStream (asynchronously, as a fleet of
// adapters would), consumed in batches, committed to PostgreSQL, acked.
// 1000 distinct devices, so most events of a batch touch different rows.
func BenchmarkRegistryUpsertThroughBus(b *testing.B) {
	srv := bustest.StartServer(b)
	bb := bustest.Connect(b, srv.URL())
	s, _ := storetest.Open(b)
	r, err := controller.NewRegistry(context.Background(), controller.RegistryOptions{Bus: bb, Store: s, BatchSize: 500})
	if err != nil {
		b.Fatal(err)
	}
	r.Start()
	defer r.Stop()
	ctx := context.Background()
	js := bb.JetStream()
	cons, err := js.Consumer(ctx, bus.EventStream, "duet-controller")
	if err != nil {
		b.Fatal(err)
	}
	payloads := make([][]byte, 1000)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("bench-%04d", i%1000)
		ev := informEvent(id, fmt.Sprint(i))
		ev.Id = bus.NewID()
		data, _ := marshal(ev)
		payloads[i%1000] = data
		if _, err := js.PublishAsync(bus.EventSubject("cwmp", id, "inform"), data); err != nil {
			b.Fatal(err)
		}
	}
	<-js.PublishAsyncComplete()
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if info.NumPending == 0 && info.NumAckPending == 0 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "upserts/s")
	_ = duetv1.Protocol_PROTOCOL_CWMP
}
