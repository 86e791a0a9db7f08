package agent_test

import (
	"context"
	"testing"

	"github.com/go-stomp/stomp/v3"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
)

const rabbitSTOMP = "127.0.0.1:61613"

func TestSTOMP(t *testing.T) {
	base := numGoroutines()
	prefix := "/queue/duet-test-" + unique(t)
	ctrlDest, agentDest := prefix+"-controller", prefix+"-agent"
	ctl, err := stomp.Dial("tcp", rabbitSTOMP, stomp.ConnOpt.Login("guest", "guest"), stomp.ConnOpt.Host("/"))
	if err != nil {
		t.Fatalf("RabbitMQ STOMP at %s: %v (enable with: rabbitmq-plugins enable rabbitmq_stomp)", rabbitSTOMP, err)
	}
	sub, err := ctl.Subscribe(ctrlDest, stomp.AckAuto)
	if err != nil {
		t.Fatal(err)
	}
	recv := make(chan []byte, 64)
	headers := make(chan *stomp.Message, 64)
	go func() {
		for m := range sub.C {
			if m.Err != nil {
				return
			}
			recv <- m.Body
			headers <- m
		}
	}()
	a := newWireAgent(t, "STOMP-"+unique(t), "STOMP")
	c, err := agent.DialSTOMP(context.Background(), a, agent.STOMPConfig{Server: rabbitSTOMP, Login: "guest", Passcode: "guest",
		Destination: agentDest, ControllerDestination: ctrlDest})
	if err != nil {
		t.Fatal(err)
	}
	w := &wireCtl{t: t, eid: a.EndpointID(), recv: recv, send: func(rec []byte) {
		if err := ctl.Send(agentDest, usp.STOMPContentType, rec, stomp.SendOpt.Header(usp.STOMPReplyToHeader, ctrlDest)); err != nil {
			t.Error(err)
		}
	}}
	exercise(t, w, a, c, usp.RecordSTOMPConnect, func(r *usp.Record) {
		if r.SubscribedDestination != agentDest {
			t.Fatalf("STOMPConnect: %+v", r)
		}
		m := <-headers
		if m.ContentType != usp.STOMPContentType || m.Header.Get("reply-to-dest") != agentDest {
			t.Fatalf("SEND headers: content-type %q reply-to-dest %q", m.ContentType, m.Header.Get("reply-to-dest"))
		}
	})
	c.Close()
	c.Close()
	a.Close()
	ctl.Disconnect()
	noLeak(t, base)
}
