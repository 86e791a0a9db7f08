package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"

	"github.com/eclipse/paho.golang/paho"

	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

// MQTTConfig configures the agent's MQTT client (TR-369 "MQTT Binding").
type MQTTConfig struct {
	Broker string // host:port, e.g. 127.0.0.1:1883; required
	// ProtocolVersion is "5.0" (the default) or "3.1.1", the values of
	// Device.MQTT.Client.{i}.ProtocolVersion.
	ProtocolVersion string
	// ControllerTopic is where agent-originated records go
	// (Device.LocalAgent.Controller.1.MTP.1.MQTT.Topic); required.
	ControllerTopic string
	// AgentTopic is the agent's own reply-to topic
	// (ResponseTopicConfigured). Empty takes the CONNACK Response
	// Information; with neither, Dial fails: never publish without a
	// subscription.
	AgentTopic string
	ClientID   string // empty: v5 sends an empty ClientID and the broker assigns one
	Username   string
	Password   string
	// TLS, when set, dials the broker over TLS (MQTTS); its
	// Certificates may carry a client certificate naming the agent
	// (subjectAltName urn:bbf:usp:id:<endpoint-id>), which the embedded
	// broker accepts instead of a password.
	TLS       *tls.Config
	KeepAlive uint16 // seconds, default 30
	QoS       byte   // PUBLISH QoS, 0 (obuspa's default) or 1
}

// DialMQTT connects a to an MQTT broker, subscribes to its topic and
// sends the MQTTConnectRecord first, then serves the agent until Close.
// With MQTT 5 the CONNECT carries the user property usp-endpoint-id and
// every PUBLISH carries Content Type usp.msg and the agent topic as
// Response Topic; with 3.1.1 the topic name gets a /reply-to= suffix.
func DialMQTT(ctx context.Context, a *Agent, cfg MQTTConfig) (*Client, error) {
	if cfg.Broker == "" || cfg.ControllerTopic == "" {
		return nil, errors.New("agent: MQTTConfig.Broker and ControllerTopic are required")
	}
	if cfg.QoS > 1 {
		return nil, fmt.Errorf("agent: MQTTConfig.QoS %d is not 0 or 1", cfg.QoS)
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = 30
	}
	switch cfg.ProtocolVersion {
	case "", "5.0", "5":
		return start(ctx, a, func(ctx context.Context) (session, error) { return dialMQTT5(ctx, a, cfg) })
	case "3.1.1":
		return start(ctx, a, func(ctx context.Context) (session, error) { return dialMQTT311(ctx, a, cfg) })
	}
	return nil, fmt.Errorf("agent: MQTTConfig.ProtocolVersion %q is not 5.0 or 3.1.1", cfg.ProtocolVersion)
}

type mqttSession struct {
	cli      *paho.Client
	cfg      MQTTConfig
	topic    string
	in       chan inbound
	lostCh   chan struct{}
	lostOnce sync.Once
}

func (s *mqttSession) incoming() <-chan inbound { return s.in }
func (s *mqttSession) lost() <-chan struct{}    { return s.lostCh }
func (s *mqttSession) markLost()                { s.lostOnce.Do(func() { close(s.lostCh) }) }

func (s *mqttSession) close() {
	_ = s.cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
	<-s.cli.Done()
	s.markLost()
}

func (s *mqttSession) publish(topic string, rec []byte) error {
	_, err := s.cli.Publish(context.Background(), &paho.Publish{
		Topic: topic, QoS: s.cfg.QoS, Payload: rec,
		Properties: &paho.PublishProperties{ContentType: usp.MQTTContentType, ResponseTopic: s.topic},
	})
	return err
}

func (s *mqttSession) send(rec []byte) error { return s.publish(s.cfg.ControllerTopic, rec) }

func dialMQTT5(ctx context.Context, a *Agent, cfg MQTTConfig) (session, error) {
	conn, err := dialTCP(ctx, cfg.Broker, cfg.TLS)
	if err != nil {
		return nil, err
	}
	s := &mqttSession{cfg: cfg, in: make(chan inbound, 16), lostCh: make(chan struct{})}
	s.cli = paho.NewClient(paho.ClientConfig{
		Conn: conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			p := pr.Packet
			if p.Properties != nil && p.Properties.ContentType != "" && !usp.IsUSPContentType(p.Properties.ContentType) {
				return true, nil // not a USP record (TR-369 "MQTT Binding" Receive)
			}
			replyTo := cfg.ControllerTopic // obuspa's fallback without a Response Topic
			if p.Properties != nil && p.Properties.ResponseTopic != "" {
				replyTo = p.Properties.ResponseTopic
			}
			select {
			case s.in <- inbound{rec: p.Payload, reply: func(rec []byte) error { return s.publish(replyTo, rec) }}:
			case <-s.lostCh:
			}
			return true, nil
		}},
		OnClientError:      func(error) { s.markLost() },
		OnServerDisconnect: func(*paho.Disconnect) { s.markLost() },
	})
	eid := a.EndpointID()
	ca, err := s.cli.Connect(ctx, &paho.Connect{
		ClientID: cfg.ClientID, CleanStart: true, KeepAlive: cfg.KeepAlive,
		Username: cfg.Username, UsernameFlag: cfg.Username != "",
		Password: []byte(cfg.Password), PasswordFlag: cfg.Password != "",
		Properties: &paho.ConnectProperties{
			User:                paho.UserProperties{{Key: usp.MQTTEndpointIDProperty, Value: eid}},
			RequestResponseInfo: true,
		},
	})
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("agent: MQTT connect: %w", err)
	}
	s.topic = cfg.AgentTopic
	if s.topic == "" && ca.Properties != nil {
		s.topic = ca.Properties.ResponseInfo
	}
	if s.topic == "" {
		s.close()
		return nil, errors.New("agent: no agent topic: set MQTTConfig.AgentTopic or use a broker sending Response Information")
	}
	if _, err := s.cli.Subscribe(ctx, &paho.Subscribe{
		Subscriptions: []paho.SubscribeOptions{{Topic: s.topic, QoS: 1}},
		Properties:    &paho.SubscribeProperties{User: paho.UserProperties{{Key: usp.MQTTEndpointIDProperty, Value: eid}}},
	}); err != nil {
		s.close()
		return nil, fmt.Errorf("agent: MQTT subscribe %s: %w", s.topic, err)
	}
	rec, err := usp.MarshalMQTTConnect(eid, a.ControllerID(), usprecord.MQTTConnectRecord_V5, s.topic)
	if err == nil {
		err = s.send(rec)
	}
	if err != nil {
		s.close()
		return nil, err
	}
	go func() {
		<-s.cli.Done()
		s.markLost()
	}()
	return s, nil
}
