package mqtt

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/duet-dm/duet/adapters/usp"
	"github.com/duet-dm/duet/adapters/usp/internal/usptest"
	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/sim/agent"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

// attacker is any client of the broker: it subscribes to its own topic and
// counts what Duet sends it.
type attacker struct {
	c     *paho.Client
	topic string
	got   atomic.Int64
}

func connectAttacker(t *testing.T, addr, username, password string) (*attacker, error) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	at := &attacker{topic: uniq("evil")}
	at.c = paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(paho.PublishReceived) (bool, error) { at.got.Add(1); return true, nil }}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ca, err := at.c.Connect(ctx, &paho.Connect{KeepAlive: 30, CleanStart: true, ClientID: "evil-" + bus.NewID()[:8],
		Username: username, UsernameFlag: username != "", Password: []byte(password), PasswordFlag: password != ""})
	if err != nil {
		return nil, err
	}
	if ca.ReasonCode != 0 {
		return nil, fmt.Errorf("connack reason %d", ca.ReasonCode)
	}
	t.Cleanup(func() { _ = at.c.Disconnect(&paho.Disconnect{}) })
	_, _ = at.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: at.topic}}})
	return at, nil
}

// hijack publishes a Connect record in the victim's name, asking to be
// answered at the attacker's topic (issue 15 §2).
func (at *attacker) hijack(t *testing.T, victim, ctrlID, ctrlTopic string) error {
	t.Helper()
	rec, err := pkgusp.MarshalMQTTConnect(victim, ctrlID, usprecord.MQTTConnectRecord_V5, at.topic)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = at.c.Publish(ctx, &paho.Publish{Topic: ctrlTopic, QoS: 1, Payload: rec,
		Properties: &paho.PublishProperties{ContentType: pkgusp.MQTTContentType, ResponseTopic: at.topic}})
	return err
}

// TestHijackRefusedByReplyPattern: over an external broker (Mosquitto)
// that lets anyone publish to the controller topic, a Connect record with
// a victim's from_id and the attacker's topic no longer moves the victim:
// the reply topic is not the victim's under the pattern. Before: the
// next Get went to the attacker.
func TestHijackRefusedByReplyPattern(t *testing.T) {
	needMosquitto(t)
	prefix := uniq("usp/agent")
	ep, b := usptest.Endpoint(t, func(o *usp.Options) {
		o.RequestTimeout = 5 * time.Second
		o.ReplyPatterns = map[string]string{"mqtt": prefix + "/{endpoint}"}
	})
	tr := startTransport(t, ep, Options{BrokerURL: "mqtt://" + mosquittoAddr, Topic: uniq("usp/controller")})
	a := usptest.SimAgent(t, ep.ID(), "MQTT")
	w := usptest.Watch(t, b, a.EndpointID())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := agent.DialMQTT(ctx, a, agent.MQTTConfig{Broker: mosquittoAddr, ControllerTopic: tr.Topic(), AgentTopic: prefix + "/" + a.EndpointID()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	w.Wait("online", func(ev *duetv1.Event) bool { return ev.GetDevice().GetSerialNumber() != "" })

	at, err := connectAttacker(t, mosquittoAddr, "", "")
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"mtp": "mqtt", "reason": usp.DropReplyOutsidePattern}
	before := usptest.MetricValue(t, "duet_usp_records_dropped_total", labels)
	if err := at.hijack(t, a.EndpointID(), ep.ID(), tr.Topic()); err != nil {
		t.Fatal(err)
	}
	bustest.CheckFor(t, 30*time.Second, 10*time.Millisecond, func() error {
		if usptest.MetricValue(t, "duet_usp_records_dropped_total", labels) <= before {
			return errNotYet
		}
		return nil
	})
	// The victim still gets its requests.
	if got := usptest.MustGet(t, b, a.EndpointID(), "Device.DeviceInfo.SerialNumber"); got["Device.DeviceInfo.SerialNumber"] == "" {
		t.Fatal(got)
	}
	if n := at.got.Load(); n != 0 {
		t.Fatalf("the attacker received %d records meant for the victim", n)
	}
}

type notYet struct{}

func (notYet) Error() string { return "not yet" }

var errNotYet error = notYet{}
