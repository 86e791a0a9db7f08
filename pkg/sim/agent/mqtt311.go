package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	mqtt311 "github.com/eclipse/paho.mqtt.golang"

	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

// MQTT 3.1.1 uses github.com/eclipse/paho.mqtt.golang: paho.golang speaks
// only MQTT 5 (its client hard-codes protocol level 5 and its packets
// always carry v5 properties), and TR-369 lets endpoints add 3.1.1, which
// obuspa offers (TR-369 "MQTT Binding").

type mqtt311Session struct {
	cli      mqtt311.Client
	cfg      MQTTConfig
	in       chan inbound
	lostCh   chan struct{}
	lostOnce sync.Once
}

func (s *mqtt311Session) incoming() <-chan inbound { return s.in }
func (s *mqtt311Session) lost() <-chan struct{}    { return s.lostCh }
func (s *mqtt311Session) markLost()                { s.lostOnce.Do(func() { close(s.lostCh) }) }

func (s *mqtt311Session) close() {
	s.markLost()
	s.cli.Disconnect(100)
}

// publish appends /reply-to=<agent topic> to the topic name: v3.1.1 has no
// Response Topic property (TR-369 "MQTT Binding").
func (s *mqtt311Session) publish(topic string, rec []byte) error {
	t := s.cli.Publish(usp.MQTTReplyToTopic(topic, s.cfg.AgentTopic), s.cfg.QoS, false, rec)
	if !t.WaitTimeout(10 * time.Second) {
		return errors.New("agent: MQTT 3.1.1 publish timed out")
	}
	return t.Error()
}

func (s *mqtt311Session) send(rec []byte) error { return s.publish(s.cfg.ControllerTopic, rec) }

func wait311(ctx context.Context, t mqtt311.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(10 * time.Second):
		return errors.New("agent: MQTT 3.1.1 broker did not answer")
	}
}

func dialMQTT311(ctx context.Context, a *Agent, cfg MQTTConfig) (session, error) {
	if cfg.AgentTopic == "" {
		return nil, errors.New("agent: MQTT 3.1.1 needs MQTTConfig.AgentTopic (no CONNACK Response Information)")
	}
	eid := a.EndpointID()
	s := &mqtt311Session{cfg: cfg, in: make(chan inbound, 16), lostCh: make(chan struct{})}
	clientID := cfg.ClientID
	if clientID == "" {
		clientID = eid // v3.1.1 without a configured ClientId uses the Endpoint ID
	}
	opts := mqtt311.NewClientOptions().
		AddBroker("tcp://" + cfg.Broker).
		SetClientID(clientID).
		SetProtocolVersion(4). // 3.1.1
		SetCleanSession(true).
		SetAutoReconnect(false). // Client reconnects and resends the Connect record
		SetConnectRetry(false).
		SetKeepAlive(time.Duration(cfg.KeepAlive) * time.Second).
		SetConnectionLostHandler(func(mqtt311.Client, error) { s.markLost() })
	if cfg.Username != "" {
		opts.SetUsername(cfg.Username).SetPassword(cfg.Password)
	}
	if cfg.TLS != nil {
		opts.Servers = nil
		opts.AddBroker("ssl://" + cfg.Broker).SetTLSConfig(cfg.TLS)
	}
	s.cli = mqtt311.NewClient(opts)
	if err := wait311(ctx, s.cli.Connect()); err != nil {
		s.cli.Disconnect(0)
		return nil, fmt.Errorf("agent: MQTT 3.1.1 connect: %w", err)
	}
	// "<topic>/#" also matches the topic itself and every /reply-to=
	// suffix, as obuspa subscribes.
	err := wait311(ctx, s.cli.Subscribe(cfg.AgentTopic+"/#", 1, func(_ mqtt311.Client, m mqtt311.Message) {
		replyTo := cfg.ControllerTopic // obuspa's fallback without a reply-to
		if _, r, ok := usp.ParseMQTTReplyTo(m.Topic()); ok {
			replyTo = r
		}
		select {
		case s.in <- inbound{rec: m.Payload(), reply: func(rec []byte) error { return s.publish(replyTo, rec) }}:
		case <-s.lostCh:
		}
	}))
	if err != nil {
		s.close()
		return nil, fmt.Errorf("agent: MQTT 3.1.1 subscribe: %w", err)
	}
	rec, err := usp.MarshalMQTTConnect(eid, a.ControllerID(), usprecord.MQTTConnectRecord_V3_1_1, cfg.AgentTopic)
	if err == nil {
		err = s.send(rec)
	}
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}
