package cwmp

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/cwmp"
)

// BenchmarkInformSession measures whole minimal sessions: Inform ->
// InformResponse -> empty POST -> (controller answers no work) -> 204, with
// the inform and periodic events published and acknowledged by JetStream.
func BenchmarkInformSession(b *testing.B) {
	e := newEnv(b, func(o *Options) { o.MaxSessions = 100000 })
	tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	bodies := make([][]byte, 64)
	for i := range bodies {
		c := newCPE(b, e.url, "Device.", "BENCH"+strconv.Itoa(i), true, false)
		bodies[i], _ = cwmp.Encode(&cwmp.Envelope{Namespace: c.ns, Header: cwmp.Header{ID: "1"}, Body: c.inform(cwmp.EventPeriodic)})
	}
	post := func(body []byte) int {
		req, _ := http.NewRequest(http.MethodPost, e.url, bytes.NewReader(body))
		req.Header.Set("Content-Type", cwmp.ContentType)
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		if st := post(bodies[i%len(bodies)]); st != http.StatusOK {
			b.Fatalf("inform: %d", st)
		}
		if st := post(nil); st != http.StatusNoContent {
			b.Fatalf("empty POST: %d", st)
		}
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "sessions/s")
}
