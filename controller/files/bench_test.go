package files_test

import (
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/duet-dm/duet/controller/files"
)

// BenchmarkServeFile measures one device fetching a 16 MiB image from the
// object store through the file listener (MB/s is the serving throughput).
func BenchmarkServeFile(b *testing.B) {
	benchServe(b, false)
}

// BenchmarkServeFileConcurrent has GOMAXPROCS×8 devices fetching at once
// (go test -bench ServeFileConcurrent -cpu 1,2 varies it): aggregate MB/s.
func BenchmarkServeFileConcurrent(b *testing.B) {
	benchServe(b, true)
}

func benchServe(b *testing.B, parallel bool) {
	r := newRig(b, 0)
	const size = 16 << 20
	f, err := r.repo.Put(b.Context(), files.Upload{Name: "bench.img", Type: "other", UploadedBy: "bench", ExpectedSize: -1},
		bytes.NewReader(bytes.Repeat([]byte{0xA5}, size)))
	if err != nil {
		b.Fatal(err)
	}
	u := r.urls.Download(f.ID, f.Name, "bench-device")
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	fetch := func() {
		res, err := client.Get(u)
		if err != nil {
			b.Error(err)
			return
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || n != size {
			b.Errorf("%d, %d bytes", res.StatusCode, n)
		}
	}
	b.SetBytes(size)
	b.ResetTimer()
	if !parallel {
		for range b.N {
			fetch()
		}
		return
	}
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			fetch()
		}
	})
}

// BenchmarkTestDownload measures the throughput-test download (generated
// bytes, nothing read from the object store): the ceiling the listener
// puts on a device's DownloadDiagnostics measured against Duet.
func BenchmarkTestDownload(b *testing.B) {
	r := newRig(b, 0)
	const size = 64 << 20
	u := r.urls.TestDownload("bench-device", size)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		res, err := http.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 || n != size {
			b.Fatalf("%d, %d bytes", res.StatusCode, n)
		}
	}
}
