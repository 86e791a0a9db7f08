package usp

import (
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	pkgusp "github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// BenchmarkHandleRecordResponse measures the receive path of the Endpoint:
// decode a Record and its Msg, check to_id and from_id, find the pending
// request by msg_id and hand the answer to its waiter. Reported as
// records/s (single goroutine, like one MQTT/STOMP receive loop).
func BenchmarkHandleRecordResponse(b *testing.B) {
	f := newFixture(b, func(o *Options) {
		o.OnboardValueChange = []string{}
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	})
	a := f.agent("os::00D09E-BENCH")
	a.Silent.Store(true) // onboarding requests stay unanswered
	f.connect(a)
	s := f.ep.session(a.ID)
	const n = 1024
	recs := make([][]byte, n)
	for i := range n {
		resp := pkgusp.NewResponse(fmt.Sprintf("m-%d", i), &uspmsg.Response{RespType: &uspmsg.Response_GetResp{GetResp: &uspmsg.GetResp{
			ReqPathResults: []*uspmsg.GetResp_RequestedPathResult{{RequestedPath: "Device.DeviceInfo.", ResolvedPathResults: []*uspmsg.GetResp_ResolvedPathResult{{
				ResolvedPath: "Device.DeviceInfo.", ResultParams: map[string]string{"Manufacturer": "Duet", "ModelName": "TA-1", "SerialNumber": "SN-1", "SoftwareVersion": "1.0.0"}}}}}}}})
		rec, err := pkgusp.MarshalMsgRecord(a.ID, f.ep.ID(), resp)
		if err != nil {
			b.Fatal(err)
		}
		recs[i] = rec
	}
	ch := make(chan reply, 1)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		id := fmt.Sprintf("m-%d", i%n)
		f.ep.mu.Lock()
		s.pending[id] = ch
		f.ep.mu.Unlock()
		if err := f.ep.HandleRecord(f.mtp, Address{Reply: a.ID}, recs[i%n]); err != nil {
			b.Fatal(err)
		}
		<-ch
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "records/s")
}
