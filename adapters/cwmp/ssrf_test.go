package cwmp

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestConnectionRequestTargetRefused is issue 15 §7: a CPE that informed
// ConnectionRequestURL=http://127.0.0.1:<port>/internal-admin received
// Duet's connection requests (and Digest answers) there. With the default
// targets, loopback, a name resolving to it, and the metadata address are
// refused before any byte is sent, as denied; nothing reaches the server.
func TestConnectionRequestTargetRefused(t *testing.T) {
	var hits atomic.Int32
	internal := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("WWW-Authenticate", `Digest realm="x", nonce="n", qop="auth"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer internal.Close()
	e := newEnv(t, func(o *Options) { o.ConnReqTargets = nil })
	port := internal.URL[strings.LastIndex(internal.URL, ":")+1:]
	for _, u := range []string{
		internal.URL + "/internal-admin",
		"http://localhost:" + port + "/internal-admin",
		"http://169.254.169.254/latest/meta-data/",
		"http://[::1]:" + port + "/",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		res, err := e.bus.Request(ctx, devicemodel.ProtocolCWMP, &duetv1.Command{DeviceId: "00D09E-IGW-SSRF",
			Op: &duetv1.Command_ConnectionRequest{ConnectionRequest: &duetv1.ConnectionRequest{
				Url: u, Username: "cr", Password: "pw"}}})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		if res.GetError().GetCode() != duetv1.ErrorCode_ERROR_CODE_DENIED {
			t.Errorf("%s: result %v, want denied", u, res)
		}
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the internal server got %d requests", n)
	}
}
