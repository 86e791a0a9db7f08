package controller_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
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
		ev := &duetv1.Event{Id: bus.NewID(),
			Device: &duetv1.DeviceIdentity{Id: id, Protocol: duetv1.Protocol_PROTOCOL_CWMP, SoftwareVersion: fmt.Sprint(i)},
			Kind:   &duetv1.Event_Inform{Inform: &duetv1.Inform{}}}
		data, _ := proto.Marshal(ev)
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

// BenchmarkTaskDispatchUSP measures tasks created and dispatched per second
// end to end: TaskQueue.Create (validation, one INSERT) by 8 concurrent
// callers over 100 online USP devices, each task claimed in its own
// transaction, sent over NATS to a responder that answers at once, and its
// result committed. The PostgreSQL round trips per task (create, claim,
// finish) bound it, not the bus.
func BenchmarkTaskDispatchUSP(b *testing.B) {
	srv := bustest.StartServer(b)
	bb := bustest.Connect(b, srv.URL())
	s, _ := storetest.Open(b)
	ctx := context.Background()
	const devices = 100
	var obs []store.Observation
	for i := 0; i < devices; i++ {
		obs = append(obs, store.Observation{EventID: bus.NewID(), Kind: "online", Time: time.Now(), Online: true,
			Payload: []byte{}, Device: devicemodel.Device{ID: fmt.Sprintf("os::bench-%03d", i), Protocol: devicemodel.ProtocolUSP}})
	}
	if err := s.ApplyObservations(ctx, obs); err != nil {
		b.Fatal(err)
	}
	sub, err := bb.ServeCommands(bus.CommandWildcard(devicemodel.ProtocolUSP), "", func(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
		return &duetv1.CommandResult{Result: &duetv1.CommandResult_Set{Set: &duetv1.SetResult{}}}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Stop()
	q, err := controller.NewTaskQueue(controller.TaskQueueOptions{Store: s, Bus: bb, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	if err := q.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer q.Stop()
	req := controller.TaskRequest{Operation: "set", Params: []controller.ParamJSON{{Path: "Device.WiFi.SSID.1.SSID", Value: "bench"}}}
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan int)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := q.Create(ctx, fmt.Sprintf("os::bench-%03d", i%devices), req); err != nil {
					b.Error(err)
				}
			}
		}()
	}
	for i := 0; i < b.N; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	for {
		var n int
		if err := s.Pool().QueryRow(ctx, "SELECT count(*) FROM tasks WHERE state = 'succeeded'").Scan(&n); err != nil {
			b.Fatal(err)
		}
		if n == b.N {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "tasks/s")
}
