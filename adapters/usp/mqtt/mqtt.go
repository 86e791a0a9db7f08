// Package mqtt is the USP MQTT binding (TR-369 "MQTT Binding") on the Controller side:
// an MQTT 5 client of any broker that hands received Records to a
// usp.Endpoint and publishes Records to agents.
//
// The controller always speaks MQTT 5 to its broker. Agents on MQTT 3.1.1
// still work through a broker that bridges versions (Mosquitto and
// mochi-mqtt do): we read their "/reply-to=" topic suffix and append ours
// when publishing to them, as the TR-369 "MQTT Binding" prescribes for v3.1.1.
package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/autopaho"
	"github.com/eclipse/paho.golang/paho"

	"github.com/duet-dm/duet/adapters/usp"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
)

// Options configure the MQTT transport.
type Options struct {
	// Endpoint receives the records. Required.
	Endpoint *usp.Endpoint
	// BrokerURL, e.g. "mqtt://127.0.0.1:1883" or "tls://broker:8883".
	// Default "mqtt://127.0.0.1:1883".
	BrokerURL string
	// ClientID; default "duet-" + the endpoint's AdapterID.
	ClientID string
	Username string
	Password string
	// TLS configures the connection for tls://, ssl://, mqtts:// and wss://
	// brokers: the CA that signs the broker's certificate and, for mutual
	// TLS, Duet's client certificate (pkg/tlsutil reloads both). Nil: the
	// system's roots, no client certificate.
	TLS *tls.Config
	// Topic is the controller topic agents publish to
	// (Device.LocalAgent.Controller.{i}.MTP.{i}.MQTT.Topic on the agent).
	// Default "usp/controller/<endpoint-id>".
	Topic string
	// SharedGroup, when set, subscribes to Topic as
	// "$share/<SharedGroup>/<Topic>/#" so several adapter processes share
	// agent-originated traffic. Each process then receives responses on its
	// own ReplyTopic, which it puts in every PUBLISH as Response Topic.
	SharedGroup string
	// ReplyTopic is the Response Topic of our PUBLISHes. Default Topic, or
	// "<Topic>/reply/<ClientID>" with SharedGroup (answers must come back
	// to the process that asked).
	ReplyTopic string
	// QoS of our subscriptions and publishes: 0 or 1 (TR-369 "MQTT Binding").
	// Default 0, like obuspa's PublishQoS. USP retries on its own (request
	// timeouts, NotifRetry), and QoS 1 costs ~44 ms per round trip on a
	// Mosquitto with its default set_tcp_nodelay false: the broker's Nagle
	// holds our answer behind the PUBACK it just sent until our delayed ACK
	// (BenchmarkGetRoundTripMosquittoQoS1).
	QoS *byte
	// ConnectTimeout bounds Start's wait for the first connection. Default 10 s.
	ConnectTimeout time.Duration
	Logger         *slog.Logger
}

// Transport is the MQTT MTP.
type Transport struct {
	opts   Options
	ep     *usp.Endpoint
	log    *slog.Logger
	broker *url.URL
	qos    byte

	mu       sync.Mutex
	cm       *autopaho.ConnectionManager
	cancel   context.CancelFunc
	started  bool
	stopped  bool
	lastErr  error
	ready    chan struct{} // closed after the first successful SUBSCRIBE
	readyOne sync.Once
	wg       sync.WaitGroup
}

var _ usp.MTP = (*Transport)(nil)

// New validates the options.
func New(opts Options) (*Transport, error) {
	if opts.Endpoint == nil {
		return nil, errors.New("usp/mqtt: Options.Endpoint is required")
	}
	if opts.BrokerURL == "" {
		opts.BrokerURL = "mqtt://127.0.0.1:1883"
	}
	u, err := url.Parse(opts.BrokerURL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("usp/mqtt: Options.BrokerURL %q is not a URL like mqtt://host:1883 (schemes mqtt, tcp, tls, ssl, ws, wss)", opts.BrokerURL)
	}
	if opts.ClientID == "" {
		opts.ClientID = "duet-" + opts.Endpoint.AdapterID()
	}
	if opts.Topic == "" {
		opts.Topic = "usp/controller/" + opts.Endpoint.ID()
	}
	if opts.ReplyTopic == "" {
		opts.ReplyTopic = opts.Topic
		if opts.SharedGroup != "" {
			opts.ReplyTopic = opts.Topic + "/reply/" + opts.ClientID
		}
	}
	var qos byte
	if opts.QoS != nil {
		qos = *opts.QoS
	}
	if qos > 1 {
		return nil, fmt.Errorf("usp/mqtt: Options.QoS %d: accepted values are 0 and 1", qos)
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Transport{opts: opts, ep: opts.Endpoint, log: opts.Logger.With("component", "usp-mqtt"), broker: u, qos: qos, ready: make(chan struct{})}, nil
}

// Name implements usp.MTP.
func (t *Transport) Name() string { return "mqtt" }

// Topic is the controller topic we subscribe to.
func (t *Transport) Topic() string { return t.opts.Topic }

// ReplyTopic is the Response Topic of our PUBLISHes.
func (t *Transport) ReplyTopic() string { return t.opts.ReplyTopic }

func (t *Transport) subscriptions() []paho.SubscribeOptions {
	// "<topic>/#" also matches "<topic>" itself and the v3.1.1
	// "<topic>/reply-to=..." form (TR-369 "MQTT Binding").
	main := t.opts.Topic + "/#"
	if t.opts.SharedGroup != "" {
		main = "$share/" + t.opts.SharedGroup + "/" + main
	}
	subs := []paho.SubscribeOptions{{Topic: main, QoS: t.qos}}
	if t.opts.ReplyTopic != t.opts.Topic {
		subs = append(subs, paho.SubscribeOptions{Topic: t.opts.ReplyTopic, QoS: t.qos})
	}
	return subs
}

// Start connects to the broker and subscribes; it returns once subscribed,
// or an error naming the broker when it cannot connect within
// ConnectTimeout. After Start, autopaho reconnects (and resubscribes) on
// its own.
func (t *Transport) Start() error {
	t.mu.Lock()
	if t.started {
		t.mu.Unlock()
		return errors.New("usp/mqtt: already started")
	}
	t.started = true
	ctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	t.mu.Unlock()

	cfg := autopaho.ClientConfig{
		ServerUrls:                    []*url.URL{t.broker},
		TlsCfg:                        t.opts.TLS,
		KeepAlive:                     30,
		CleanStartOnInitialConnection: true,
		ConnectTimeout:                t.opts.ConnectTimeout,
		ReconnectBackoff:              func(n int) time.Duration { return min(time.Duration(n+1)*500*time.Millisecond, 10*time.Second) },
		ConnectUsername:               t.opts.Username,
		ConnectPassword:               []byte(t.opts.Password),
		ConnectPacketBuilder: func(c *paho.Connect, _ *url.URL) (*paho.Connect, error) {
			if c.Properties == nil {
				c.Properties = &paho.ConnectProperties{}
			}
			// TR-369 "MQTT Binding" CONNECT: user property usp-endpoint-id.
			c.Properties.User.Add(pkgusp.MQTTEndpointIDProperty, t.ep.ID())
			// MQTT 5 §3.1.2.11.4: the broker must not send us a larger
			// packet (it drops it), so no agent can make Duet buffer
			// more than a record's worth (issue 15 §3).
			maxSize := uint32(DefaultMaxPacketSize)
			c.Properties.MaximumPacketSize = &maxSize
			return c, nil
		},
		OnConnectionUp: func(cm *autopaho.ConnectionManager, _ *paho.Connack) {
			// Must not block: subscribe from a goroutine we own.
			t.wg.Add(1)
			go func() {
				defer t.wg.Done()
				sctx, cancel := context.WithTimeout(ctx, t.opts.ConnectTimeout)
				defer cancel()
				if _, err := cm.Subscribe(sctx, &paho.Subscribe{Subscriptions: t.subscriptions()}); err != nil {
					t.setErr(fmt.Errorf("subscribe %s: %w", t.opts.Topic, err))
					t.log.Error("mqtt subscribe failed", "topic", t.opts.Topic, "err", err)
					return
				}
				t.log.Info("mqtt subscribed", "broker", t.broker.Redacted(), "topic", t.opts.Topic, "shared_group", t.opts.SharedGroup)
				t.readyOne.Do(func() { close(t.ready) })
			}()
		},
		OnConnectError: func(err error) {
			t.setErr(err)
			t.log.Warn("mqtt connect failed", "broker", t.broker.Redacted(), "err", err)
		},
		ClientConfig: paho.ClientConfig{
			ClientID: t.opts.ClientID,
			OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
				t.receive(pr.Packet)
				return true, nil
			}},
		},
	}
	cm, err := autopaho.NewConnection(ctx, cfg)
	if err != nil {
		cancel()
		return fmt.Errorf("usp/mqtt: broker %s: %w", t.broker.Redacted(), err)
	}
	t.mu.Lock()
	t.cm = cm
	t.mu.Unlock()
	timer := time.NewTimer(t.opts.ConnectTimeout)
	defer timer.Stop()
	select {
	case <-t.ready:
		return nil
	case <-timer.C:
		err := t.getErr()
		_ = t.Shutdown(context.Background())
		if err == nil {
			err = errors.New("timed out")
		}
		return fmt.Errorf("usp/mqtt: cannot connect and subscribe to broker %s within %s: %w", t.broker.Redacted(), t.opts.ConnectTimeout, err)
	}
}

func (t *Transport) setErr(err error) {
	t.mu.Lock()
	t.lastErr = err
	t.mu.Unlock()
}

func (t *Transport) getErr() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.lastErr
}

// receive runs on paho's receive goroutine; HandleRecord does not block on
// the bus.
func (t *Transport) receive(p *paho.Publish) {
	from := usp.Address{}
	ct := ""
	if p.Properties != nil {
		ct = p.Properties.ContentType
		from.Reply = p.Properties.ResponseTopic
	}
	// TR-369 "MQTT Binding" Receive: accept usp.msg or application/vnd.bbf.usp.msg.
	// MQTT 3.1.1 publishes carry no properties, hence no content type.
	if ct != "" && !pkgusp.IsUSPContentType(ct) {
		t.log.Debug("mqtt publish with a non-USP content type ignored", "topic", p.Topic, "content_type", ct)
		return
	}
	if from.Reply == "" {
		if _, reply, ok := pkgusp.ParseMQTTReplyTo(p.Topic); ok {
			from.Reply = reply
			from.MQTT311 = true
		}
	}
	_ = t.ep.HandleRecord(t, from, p.Payload)
}

// Send publishes a record to an agent (TR-369 "MQTT Binding" Publish): Content Type
// usp.msg and Response Topic = our reply topic; for a v3.1.1 agent the
// reply topic also goes into the topic suffix.
func (t *Transport) Send(ctx context.Context, to usp.Address, record []byte) error {
	if to.Reply == "" {
		return errors.New("usp/mqtt: no topic for the agent")
	}
	t.mu.Lock()
	cm := t.cm
	stopped := t.stopped
	t.mu.Unlock()
	if cm == nil || stopped {
		return errors.New("usp/mqtt: transport not running")
	}
	topic := to.Reply
	if to.MQTT311 {
		topic = pkgusp.MQTTReplyToTopic(to.Reply, t.opts.ReplyTopic)
	}
	_, err := cm.Publish(ctx, &paho.Publish{
		Topic:      topic,
		QoS:        t.qos,
		Payload:    record,
		Properties: &paho.PublishProperties{ContentType: pkgusp.MQTTContentType, ResponseTopic: t.opts.ReplyTopic},
	})
	if err != nil {
		return fmt.Errorf("usp/mqtt: publish to %s: %w", topic, err)
	}
	return nil
}

// Shutdown disconnects from the broker. Safe to call twice.
func (t *Transport) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	if t.stopped || !t.started {
		t.stopped = true
		t.mu.Unlock()
		return nil
	}
	t.stopped = true
	cm, cancel := t.cm, t.cancel
	t.mu.Unlock()
	var err error
	if cm != nil {
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		_ = cm.Disconnect(dctx) // not connected is fine
		dcancel()
	}
	cancel()
	if cm != nil {
		select {
		case <-cm.Done():
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	t.wg.Wait()
	return err
}
