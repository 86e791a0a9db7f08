package agent_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
)

// wsController is a test Controller WebSocket server. It requires the eid
// query parameter and subprotocol v1.usp (TR-369 "WebSocket Binding") and hands binary
// frames to recv; send writes to the latest connection.
type wsController struct {
	srv   *httptest.Server
	recv  chan []byte
	eids  chan string
	pings atomic.Int64
	mu    sync.Mutex
	conn  *websocket.Conn
	wg    sync.WaitGroup
}

func newWSController(t *testing.T) *wsController {
	t.Helper()
	w := &wsController{recv: make(chan []byte, 64), eids: make(chan string, 4)}
	up := websocket.Upgrader{Subprotocols: []string{usp.WebSocketSubprotocol}}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		eid, ok := usp.ParseWebSocketEID(r.URL.RawQuery)
		if !ok || r.URL.Path != "/usp" {
			http.Error(rw, "missing eid", http.StatusBadRequest)
			return
		}
		protos := websocket.Subprotocols(r)
		if len(protos) != 1 || protos[0] != usp.WebSocketSubprotocol {
			http.Error(rw, "subprotocol v1.usp required", http.StatusBadRequest)
			return
		}
		conn, err := up.Upgrade(rw, r, nil)
		if err != nil {
			return
		}
		conn.SetPingHandler(func(data string) error {
			w.pings.Add(1)
			return conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(time.Second))
		})
		w.mu.Lock()
		w.conn = conn
		w.mu.Unlock()
		w.eids <- r.URL.RawQuery + "|" + eid
		w.wg.Add(1)
		defer w.wg.Done()
		for {
			typ, data, err := conn.ReadMessage()
			if err != nil {
				conn.Close()
				return
			}
			if typ != websocket.BinaryMessage {
				t.Errorf("agent sent a frame of type %d, want binary", typ)
			}
			w.recv <- data
		}
	}))
	return w
}

func (w *wsController) send(t *testing.T, rec []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.conn.WriteMessage(websocket.BinaryMessage, rec); err != nil {
		t.Error(err)
	}
}

func TestWebSocket(t *testing.T) {
	base := numGoroutines()
	ws := newWSController(t)
	a := newWireAgent(t, "WS:"+unique(t), "WebSocket")
	url := "ws" + strings.TrimPrefix(ws.srv.URL, "http") + "/usp"
	// A 250 ms keep-alive still shows Pings within the check's 5 s; at 20 ms a
	// loaded -race run missed three Pongs (60 ms) and the agent reconnected.
	c, err := agent.DialWebSocket(context.Background(), a, agent.WebSocketConfig{URL: url, KeepAlive: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// The serial's ":" makes the EID need percent-encoding beyond the "::".
	got := <-ws.eids
	if want := "eid=" + usp.PercentEncode(a.EndpointID()) + "|" + a.EndpointID(); got != want || !strings.Contains(got, "%253A") {
		t.Fatalf("eid query %q, want %q", got, want)
	}
	w := &wireCtl{t: t, eid: a.EndpointID(), recv: ws.recv, send: func(rec []byte) { ws.send(t, rec) }}
	exercise(t, w, a, c, usp.RecordWebSocketConnect, func(*usp.Record) {
		checkFor(t, 5*time.Second, func() error {
			if ws.pings.Load() < 2 {
				return errTest("agent sent no keep-alive Pings")
			}
			return nil
		})
	})
	c.Close()
	c.Close()
	a.Close()
	ws.srv.CloseClientConnections()
	ws.srv.Close()
	ws.wg.Wait()
	noLeak(t, base)
}

// A server that does not echo v1.usp is refused by the client.
func TestWebSocketRequiresSubprotocol(t *testing.T) {
	up := websocket.Upgrader{}
	srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if conn, err := up.Upgrade(rw, r, nil); err == nil {
			conn.Close()
		}
	}))
	defer srv.Close()
	a := newWireAgent(t, "WS-noproto", "WebSocket")
	defer a.Close()
	_, err := agent.DialWebSocket(context.Background(), a, agent.WebSocketConfig{URL: "ws" + strings.TrimPrefix(srv.URL, "http") + "/usp"})
	if err == nil || !strings.Contains(err.Error(), "v1.usp") {
		t.Fatalf("want a subprotocol error, got %v", err)
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }
