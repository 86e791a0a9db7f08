package agent_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/eclipse/paho.golang/paho"

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
