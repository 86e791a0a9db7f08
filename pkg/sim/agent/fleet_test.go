package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/gorilla/websocket"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
)

func TestFleetMQTT(t *testing.T) {
	const n = 20
	prefix := "duet-test/" + unique(t)
	ctrlTopic := prefix + "/controller"
	cli, recv, _ := mqttController(t, ctrlTopic)
	defer func() {
		cli.Disconnect(&paho.Disconnect{})
		<-cli.Done()
	}()
	base := numGoroutines() // the controller's client stays up through the leak check
	f, err := agent.StartFleet(context.Background(), n,
		func(i int) agent.Config {
			return agent.Config{SerialNumber: fmt.Sprintf("FLEET%04d", i), ControllerID: ctrlID}
		},
		func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			return agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: mosquitto, ControllerTopic: ctrlTopic, AgentTopic: prefix + "/agent/" + a.EndpointID()})
		})
	if err != nil {
		t.Fatal(err)
	}
	// Every agent announces itself with its own reply topic.
	topics := map[string]string{}
	for len(topics) < n {
		r, err := usp.ParseRecord(<-recv, ctrlID)
		if err != nil || r.Kind != usp.RecordMQTTConnect {
			t.Fatalf("%v %v", r, err)
		}
		topics[r.FromID] = r.SubscribedTopic
	}
	for eid, topic := range topics {
		b, _ := usp.MarshalMsgRecord(ctrlID, eid, usp.NewGet("get-"+eid, []string{"Device.DeviceInfo.SerialNumber"}, 0))
		if _, err := cli.Publish(context.Background(), &paho.Publish{Topic: topic, QoS: 1, Payload: b,
			Properties: &paho.PublishProperties{ContentType: usp.MQTTContentType, ResponseTopic: ctrlTopic}}); err != nil {
			t.Fatal(err)
		}
	}
	answered := map[string]bool{}
	for len(answered) < n {
		r, err := usp.ParseRecord(<-recv, ctrlID)
		if err != nil || r.MsgID != "get-"+r.FromID || r.Msg.GetBody().GetResponse().GetGetResp() == nil {
			t.Fatalf("%v %v", r, err)
		}
		answered[r.FromID] = true
	}
	if len(f.Agents()) != n {
		t.Fatalf("%d agents", len(f.Agents()))
	}
	f.Close()
	f.Close()
	noLeak(t, base)
}

// TestConnectFleetRetries: a server that refuses connections (as one at its
// descriptor limit does) costs ConnectFleet errors and retries, never the
// fleet: every agent ends up connected.
func TestConnectFleetRetries(t *testing.T) {
	const n, refusals = 5, 7
	var refused atomic.Int64
	connected := make(chan string, n)
	up := websocket.Upgrader{Subprotocols: []string{usp.WebSocketSubprotocol}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if refused.Add(1) <= refusals {
			http.Error(w, "too many connections", http.StatusServiceUnavailable)
			return
		}
		eid, _ := usp.ParseWebSocketEID(r.URL.RawQuery)
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer conn.Close()
		connected <- eid
		for {
			if _, _, err := conn.ReadMessage(); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	var reported atomic.Int64
	f, err := agent.ConnectFleet(context.Background(), agent.FleetOptions{
		N: n, Parallel: 2, RetryMax: 100 * time.Millisecond,
		Config: func(i int) agent.Config {
			return agent.Config{SerialNumber: fmt.Sprintf("RETRY%04d", i), ControllerID: ctrlID}
		},
		Dial: func(ctx context.Context, a *agent.Agent) (*agent.Client, error) {
			return agent.DialWebSocket(ctx, a, agent.WebSocketConfig{URL: "ws" + strings.TrimPrefix(srv.URL, "http") + "/usp"})
		},
		OnError: func(error) { reported.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	eids := map[string]bool{}
	for len(eids) < n {
		select {
		case eid := <-connected:
			eids[eid] = true
		case <-time.After(2 * time.Minute):
			t.Fatalf("%d of %d agents connected, %d errors", len(eids), n, f.Errors())
		}
	}
	select {
	case <-f.Ready():
	case <-time.After(2 * time.Minute):
		t.Fatal("Ready not closed with every agent connected")
	}
	if f.Connected() != n || f.Errors() != refusals || reported.Load() != refusals {
		t.Fatalf("connected %d, errors %d, reported %d; want %d, %d, %d", f.Connected(), f.Errors(), reported.Load(), n, refusals, refusals)
	}
}
