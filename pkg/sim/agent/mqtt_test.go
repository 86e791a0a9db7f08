package agent_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

const mosquitto = "127.0.0.1:1883"

// mqttController connects a test Controller to Mosquitto (MQTT 5) on topic.
func mqttController(t *testing.T, topic string) (*paho.Client, chan []byte, chan *paho.Publish) {
	t.Helper()
	conn, err := net.Dial("tcp", mosquitto)
	if err != nil {
		t.Fatalf("Mosquitto at %s: %v (start it with: mosquitto -d -c /etc/mosquitto/mosquitto.conf)", mosquitto, err)
	}
	recv := make(chan []byte, 64)
	pubs := make(chan *paho.Publish, 64)
	cli := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			recv <- pr.Packet.Payload
			pubs <- pr.Packet
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Connect(ctx, &paho.Connect{ClientID: "ctl-" + unique(t), CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: 1}}}); err != nil {
		t.Fatal(err)
	}
	return cli, recv, pubs
}

func TestMQTT5(t *testing.T) {
	base := numGoroutines()
	prefix := "duet-test/" + unique(t)
	ctrlTopic, agentTopic := prefix+"/controller", prefix+"/agent"
	cli, recv, pubs := mqttController(t, ctrlTopic)
	a := newWireAgent(t, "MQTT5-"+unique(t), "MQTT")
	c, err := agent.DialMQTT(context.Background(), a, agent.MQTTConfig{Broker: mosquitto, ControllerTopic: ctrlTopic, AgentTopic: agentTopic})
	if err != nil {
		t.Fatal(err)
	}
	w := &wireCtl{t: t, eid: a.EndpointID(), recv: recv, send: func(rec []byte) {
		if _, err := cli.Publish(context.Background(), &paho.Publish{Topic: agentTopic, QoS: 1, Payload: rec,
			Properties: &paho.PublishProperties{ContentType: usp.MQTTContentType, ResponseTopic: ctrlTopic}}); err != nil {
			t.Error(err)
		}
	}}
	exercise(t, w, a, c, usp.RecordMQTTConnect, func(r *usp.Record) {
		if r.MQTTVersion != usprecord.MQTTConnectRecord_V5 || r.SubscribedTopic != agentTopic {
			t.Fatalf("MQTTConnect: %+v", r)
		}
		p := <-pubs
		if p.Properties == nil || p.Properties.ContentType != "usp.msg" || p.Properties.ResponseTopic != agentTopic {
			t.Fatalf("PUBLISH properties: %+v", p.Properties)
		}
	})
	c.Close()
	c.Close()
	a.Close()
	cli.Disconnect(&paho.Disconnect{})
	<-cli.Done()
	noLeak(t, base)
}

// MQTT 3.1.1: no properties, so the agent's reply topic travels as a
// /reply-to= suffix on the topic name and the controller answers there.
func TestMQTT311(t *testing.T) {
	prefix := "duet-test/" + unique(t)
	ctrlTopic, agentTopic := prefix+"/controller", prefix+"/agent"
	// The controller subscribes to its topic and every suffix of it.
	cli, recv, pubs := mqttController(t, ctrlTopic+"/#")
	base := numGoroutines()
	a := newWireAgent(t, "MQTT311-"+unique(t), "MQTT")
	c, err := agent.DialMQTT(context.Background(), a, agent.MQTTConfig{Broker: mosquitto, ProtocolVersion: "3.1.1",
		ControllerTopic: ctrlTopic, AgentTopic: agentTopic})
	if err != nil {
		t.Fatal(err)
	}
	w := &wireCtl{t: t, eid: a.EndpointID(), recv: recv, send: func(rec []byte) {
		if _, err := cli.Publish(context.Background(), &paho.Publish{Topic: usp.MQTTReplyToTopic(agentTopic, ctrlTopic), QoS: 1, Payload: rec}); err != nil {
			t.Error(err)
		}
	}}
	exercise(t, w, a, c, usp.RecordMQTTConnect, func(r *usp.Record) {
		if r.MQTTVersion != usprecord.MQTTConnectRecord_V3_1_1 || r.SubscribedTopic != agentTopic {
			t.Fatalf("MQTTConnect: %+v", r)
		}
		p := <-pubs
		if base, reply, ok := usp.ParseMQTTReplyTo(p.Topic); !ok || base != ctrlTopic || reply != agentTopic {
			t.Fatalf("topic %q", p.Topic)
		}
	})
	c.Close()
	c.Close()
	a.Close()
	noLeak(t, base)
	cli.Disconnect(&paho.Disconnect{})
	<-cli.Done()
}

// Closing the Agent stops its client without a Close call, and the broker
// connection goes with it.
func TestClientStopsWithAgent(t *testing.T) {
	prefix := "duet-test/" + unique(t)
	base := numGoroutines()
	a := newWireAgent(t, "STOPS-"+unique(t), "MQTT")
	c, err := agent.DialMQTT(context.Background(), a, agent.MQTTConfig{Broker: mosquitto, ControllerTopic: prefix + "/c", AgentTopic: prefix + "/a"})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("client still running after its agent closed")
	}
	if c.Connects() != 1 {
		t.Fatalf("client reconnected %d times after its agent closed", c.Connects()-1)
	}
	c.Close()
	noLeak(t, base)
}
