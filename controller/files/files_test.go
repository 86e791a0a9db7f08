package files_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

type rig struct {
	repo *files.Repository
	st   *store.Store
	urls *files.URLs
	srv  *httptest.Server
}

func newRig(t testing.TB, maxSize int64) *rig {
	t.Helper()
	b, _ := bustest.Start(t)
	return newRigOn(t, maxSize, b)
}

// newRigOn is newRig over a given bus (the machine's nats-server, say).
func newRigOn(t testing.TB, maxSize int64, b *bus.Bus) *rig {
	t.Helper()
	st, _ := storetest.Open(t)
	repo, err := files.NewRepository(t.Context(), files.RepositoryOptions{Store: st, Bus: b, MaxSize: maxSize})
	if err != nil {
		t.Fatal(err)
	}
	key, err := st.FileSigningKey(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := files.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	s, err := files.NewServer(files.ServerOptions{Repository: repo, Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.Handler())
	t.Cleanup(hs.Close)
	return &rig{repo: repo, st: st, srv: hs, urls: &files.URLs{Signer: signer, Base: hs.URL, TTL: time.Hour}}
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestPutChecksSizeAndDigest(t *testing.T) {
	r := newRig(t, 1<<20)
	data := bytes.Repeat([]byte("firmware"), 50_000) // 400 kB: several chunks
	f, err := r.repo.Put(t.Context(), files.Upload{Name: "fw-2.0.bin", Type: "firmware", Version: "2.0", UploadedBy: "test",
		ExpectedSize: int64(len(data)), ExpectedSHA256: sum(data)}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if f.Size != int64(len(data)) || f.SHA256 != sum(data) || f.Version != "2.0" {
		t.Fatalf("stored %+v", f)
	}
	// A wrong announced digest keeps nothing.
	_, err = r.repo.Put(t.Context(), files.Upload{Name: "x.bin", Type: "other", UploadedBy: "test", ExpectedSize: -1,
		ExpectedSHA256: strings.Repeat("0", 64)}, bytes.NewReader(data))
	if devicemodel.ErrorCode(err) != devicemodel.CodeConflict {
		t.Fatalf("mismatch: %v", err)
	}
	// Past the limit: refused.
	_, err = r.repo.Put(t.Context(), files.Upload{Name: "big.bin", Type: "other", UploadedBy: "test", ExpectedSize: -1},
		bytes.NewReader(make([]byte, 2<<20)))
	if devicemodel.ErrorCode(err) != devicemodel.CodeResourcesExceeded {
		t.Fatalf("too large: %v", err)
	}
	all, err := r.st.FindFiles(t.Context(), store.FileFilter{})
	if err != nil || len(all) != 1 {
		t.Fatalf("files kept: %v %v", all, err)
	}
	// A firmware file without a version is refused.
	_, err = r.repo.Put(t.Context(), files.Upload{Name: "fw.bin", Type: "firmware", UploadedBy: "test", ExpectedSize: -1}, strings.NewReader("x"))
	if devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("no version: %v", err)
	}
}

func get(t *testing.T, method, url string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), method, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res, b
}

func TestServeRangeHeadAndTokens(t *testing.T) {
	r := newRig(t, 0)
	data := make([]byte, 300_000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	f, err := r.repo.Put(t.Context(), files.Upload{Name: "image.bin", Type: "other", UploadedBy: "t", ExpectedSize: -1}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	u := r.urls.Download(f.ID, f.Name, "dev-1")

	res, body := get(t, "GET", u, nil)
	if res.StatusCode != 200 || !bytes.Equal(body, data) || res.Header.Get("Content-Length") != "300000" {
		t.Fatalf("GET: %d, %d bytes, length %q", res.StatusCode, len(body), res.Header.Get("Content-Length"))
	}
	res, body = get(t, "HEAD", u, nil)
	if res.StatusCode != 200 || len(body) != 0 || res.Header.Get("Content-Length") != "300000" || res.Header.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("HEAD: %d %v", res.StatusCode, res.Header)
	}
	// A range across a chunk boundary (128 KiB chunks).
	res, body = get(t, "GET", u, map[string]string{"Range": "bytes=131000-131099"})
	if res.StatusCode != 206 || !bytes.Equal(body, data[131000:131100]) || res.Header.Get("Content-Range") != "bytes 131000-131099/300000" {
		t.Fatalf("range: %d %q %d bytes", res.StatusCode, res.Header.Get("Content-Range"), len(body))
	}
	res, body = get(t, "GET", u, map[string]string{"Range": "bytes=-10"})
	if res.StatusCode != 206 || !bytes.Equal(body, data[len(data)-10:]) {
		t.Fatalf("suffix range: %d %d", res.StatusCode, len(body))
	}
	res, _ = get(t, "GET", u, map[string]string{"Range": "bytes=400000-"})
	if res.StatusCode != 416 {
		t.Fatalf("unsatisfiable range: %d", res.StatusCode)
	}

	// Without a valid token: refused.
	for _, bad := range []string{
		r.srv.URL + "/files/" + f.ID,
		r.srv.URL + "/files/garbage/image.bin",
		strings.Replace(u, "/files/", "/files/x", 1),
		(&files.URLs{Signer: r.urls.Signer, Base: r.srv.URL, TTL: -time.Second}).Download(f.ID, f.Name, "dev-1"),
		r.urls.Upload("vendor_config", "dev-1"), // an upload token cannot download
	} {
		res, _ := get(t, "GET", bad, nil)
		if res.StatusCode != 403 && res.StatusCode != 404 && res.StatusCode != 405 {
			t.Errorf("%s: %d, want refused", bad, res.StatusCode)
		}
	}
	other, _ := files.NewSigner(bytes.Repeat([]byte{1}, 32))
	forged := (&files.URLs{Signer: other, Base: r.srv.URL, TTL: time.Hour}).Download(f.ID, f.Name, "dev-1")
	if res, _ := get(t, "GET", forged, nil); res.StatusCode != 403 {
		t.Fatalf("forged token: %d", res.StatusCode)
	}
	// Every transfer is logged.
	bustest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		ts, err := r.st.FileTransfers(t.Context(), f.ID, 10)
		if err != nil {
			return err
		}
		if len(ts) < 3 {
			return io.ErrUnexpectedEOF
		}
		return nil
	})
}

// TestRepositoryOnExternalNATS: the repository keeps its bytes in the
// Object Store of an external nats-server (DUET_NATS_URL; the machine's
// real server, docs/testing.md) as it does in the embedded one: a file put
// there is served whole and by range through a signed URL.
func TestRepositoryOnExternalNATS(t *testing.T) {
	url := os.Getenv("DUET_TEST_NATS_URL")
	if url == "" {
		url = "nats://127.0.0.1:4222"
	}
	r := newRigOn(t, 0, bustest.Connect(t, url))
	data := make([]byte, 1_000_000) // several 128 KiB chunks
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	f, err := r.repo.Put(t.Context(), files.Upload{Name: "ext.bin", Type: "other", UploadedBy: "t", ExpectedSize: int64(len(data)), ExpectedSHA256: sum(data)}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	u := r.urls.Download(f.ID, f.Name, "dev-ext")
	if res, body := get(t, "GET", u, nil); res.StatusCode != 200 || !bytes.Equal(body, data) {
		t.Fatalf("GET from the external object store: %d, %d bytes", res.StatusCode, len(body))
	}
	if res, body := get(t, "GET", u, map[string]string{"Range": "bytes=262100-262199"}); res.StatusCode != 206 || !bytes.Equal(body, data[262100:262200]) {
		t.Fatalf("range from the external object store: %d, %d bytes", res.StatusCode, len(body))
	}
}

// TestConcurrentDownloadsComplete: many devices fetching at once each get
// the whole file. Through the object store's Get (an ordered push
// consumer into a pipe), readers slower than its flow stalled the
// consumer and transfers ended short.
func TestConcurrentDownloadsComplete(t *testing.T) {
	r := newRig(t, 0)
	data := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
	f, err := r.repo.Put(t.Context(), files.Upload{Name: "c.bin", Type: "other", UploadedBy: "t", ExpectedSize: -1}, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 16)
	for i := 0; i < 16; i++ {
		go func() {
			res, err := http.Get(r.urls.Download(f.ID, f.Name, "dev"))
			if err != nil {
				errs <- err
				return
			}
			defer res.Body.Close()
			got, err := io.ReadAll(res.Body)
			if err == nil && !bytes.Equal(got, data) {
				err = io.ErrUnexpectedEOF
			}
			errs <- err
		}()
	}
	for i := 0; i < 16; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("a concurrent download: %v", err)
		}
	}
}

func TestDeviceUpload(t *testing.T) {
	r := newRig(t, 0)
	if err := r.st.ApplyObservations(t.Context(), []store.Observation{{EventID: "e1", Kind: "boot", Time: time.Now(),
		Payload: []byte{}, Device: devicemodel.Device{ID: "dev-up", Protocol: devicemodel.ProtocolCWMP}, Online: true}}); err != nil {
		t.Fatal(err)
	}
	u := r.urls.Upload("vendor_config", "dev-up")
	req, _ := http.NewRequestWithContext(t.Context(), "PUT", u, strings.NewReader("config=1\n"))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 201 {
		t.Fatalf("upload: %d", res.StatusCode)
	}
	fs, err := r.st.FindFiles(t.Context(), store.FileFilter{DeviceID: "dev-up"})
	if err != nil || len(fs) != 1 || fs[0].Type != "vendor_config" || fs[0].Size != 9 || fs[0].UploadedBy != "device:dev-up" {
		t.Fatalf("backups of the device: %+v %v", fs, err)
	}
	// A download token cannot upload.
	req, _ = http.NewRequestWithContext(t.Context(), "PUT", strings.Replace(r.urls.Download(fs[0].ID, "x", "dev-up"), "/files/", "/uploads/", 1), strings.NewReader("x"))
	if res, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 403 && res.StatusCode != 404 {
		t.Fatalf("download token used to upload: %d", res.StatusCode)
	}
}

// zeros is an endless reader of zeros, so a big upload needs no buffer.
type zeros struct{ left int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.left == 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), z.left)
	clear(p[:n])
	z.left -= n
	return int(n), nil
}

// TestPutStreamsWithBoundedMemory stores 200 MB and checks the heap never
// held more than a bound far below the file (issue 14, done-when).
func TestPutStreamsWithBoundedMemory(t *testing.T) {
	r := newRig(t, 0)
	const size = 200 << 20
	runtime.GC()
	stop := make(chan struct{})
	peak := make(chan uint64, 1)
	go func() {
		var m runtime.MemStats
		var top uint64
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&m)
			top = max(top, m.HeapInuse)
			select {
			case <-stop:
				peak <- top
				return
			case <-tick.C:
			}
		}
	}()
	f, err := r.repo.Put(t.Context(), files.Upload{Name: "big.bin", Type: "other", UploadedBy: "t", ExpectedSize: size}, &zeros{left: size})
	close(stop)
	top := <-peak
	if err != nil {
		t.Fatal(err)
	}
	if f.Size != size {
		t.Fatalf("size %d", f.Size)
	}
	// The embedded NATS server shares this heap; its buffers are bounded
	// too. 64 MiB is a third of the file.
	const bound = 64 << 20
	t.Logf("peak heap in use while storing 200 MB: %d MiB", top>>20)
	if top > bound {
		t.Fatalf("heap in use peaked at %d MiB while storing a 200 MB file; the bound is %d MiB", top>>20, bound>>20)
	}
}

// TestURLShape: a task keeps a transfer URL with the token's place marked;
// Shape turns the URL a device reports back (an AutonomousTransferComplete)
// into that form, and leaves other URLs alone.
func TestURLShape(t *testing.T) {
	r := newRig(t, 0)
	dl := r.urls.Download("f1", "fw 2.bin", "dev-1")
	up := r.urls.Upload("vendor_config", "dev-1")
	for _, c := range []struct{ in, want string }{
		{dl, r.urls.DownloadShape("fw 2.bin")},
		{up, r.urls.UploadShape()},
		{"http://cdn.example/files/fw.bin", "http://cdn.example/files/fw.bin"},
		{"http://cdn.example/files/a.b/fw.bin", "http://cdn.example/files/" + files.TokenPlaceholder + "/fw.bin"},
		{"http://cdn.example/uploads/", "http://cdn.example/uploads/"},
	} {
		if got := files.Shape(c.in); got != c.want {
			t.Errorf("Shape(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// TestThroughputTestTransfers: the listener serves a test download of the
// size its token names (HEAD and GET, right Content-Length) and takes a
// test upload up to its size, storing nothing; a file token, a forged or
// an expired one is refused.
func TestThroughputTestTransfers(t *testing.T) {
	r := newRig(t, 0)
	const size = 3<<20 + 17 // not a multiple of the generated block
	u := r.urls.TestDownload("dev-1", size)
	res, body := get(t, "HEAD", u, nil)
	if res.StatusCode != 200 || len(body) != 0 || res.Header.Get("Content-Length") != "3145745" {
		t.Fatalf("HEAD: %d %v", res.StatusCode, res.Header)
	}
	res, body = get(t, "GET", u, nil)
	if res.StatusCode != 200 || len(body) != size || res.Header.Get("Content-Length") != "3145745" {
		t.Fatalf("GET: %d, %d bytes, %v", res.StatusCode, len(body), res.Header)
	}
	if bytes.Count(body, []byte{0}) > size/64 {
		t.Fatalf("test download is not random bytes")
	}
	put := func(u string, n int64) int {
		req, _ := http.NewRequestWithContext(t.Context(), "PUT", u, io.LimitReader(&zeros{left: n}, n))
		req.ContentLength = n
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res.StatusCode
	}
	up := r.urls.TestUpload("dev-1", 1<<20)
	if code := put(up, 1<<20); code != 200 {
		t.Fatalf("test upload: %d", code)
	}
	if code := put(up, 1<<20+1); code != 413 {
		t.Fatalf("test upload past its size: %d", code)
	}
	// Announced without a length (chunked): cut at the size.
	req, _ := http.NewRequestWithContext(t.Context(), "POST", up, io.MultiReader(&zeros{left: 2 << 20}))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 413 {
		t.Fatalf("chunked test upload past its size: %d", res.StatusCode)
	}
	if fs, err := r.st.FindFiles(t.Context(), store.FileFilter{DeviceID: "dev-1"}); err != nil || len(fs) != 0 {
		t.Fatalf("a test upload stored a file: %+v %v", fs, err)
	}
	other, _ := files.NewSigner(bytes.Repeat([]byte{1}, 32))
	for _, bad := range []string{
		r.srv.URL + "/diagnostics/download/",
		r.srv.URL + "/diagnostics/download/garbage",
		strings.Replace(u, "/download/", "/download/x", 1),
		(&files.URLs{Signer: other, Base: r.srv.URL, TTL: time.Hour}).TestDownload("dev-1", size),
		(&files.URLs{Signer: r.urls.Signer, Base: r.srv.URL, TTL: -time.Second}).TestDownload("dev-1", size),
		strings.Replace(up, "/upload/", "/download/", 1), // an upload token cannot download
		strings.Replace(r.urls.Download("f1", "x", "dev-1"), "/files/", "/diagnostics/download/", 1),
	} {
		if res, _ := get(t, "GET", bad, nil); res.StatusCode != 403 && res.StatusCode != 404 {
			t.Errorf("%s: %d, want refused", bad, res.StatusCode)
		}
	}
}
