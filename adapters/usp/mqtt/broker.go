package mqtt

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"

	mochi "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/auth"
	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/duet-dm/duet/adapters/usp"
	pkgusp "github.com/duet-dm/duet/pkg/usp"
)

// DefaultAgentTopic is the topic an agent of the embedded broker
// subscribes to when authentication is on: its only readable topic.
const DefaultAgentTopic = "usp/agent/{endpoint}"

// DefaultMaxPacketSize is the largest MQTT packet the embedded broker
// takes, announced as Maximum Packet Size in CONNACK (MQTT 5 §3.2.2.3.6):
// a record of usp.MaxRecordBytes with room for the topic and properties.
const DefaultMaxPacketSize = usp.MaxRecordBytes + 64<<10

// BrokerOptions configure the embedded broker.
type BrokerOptions struct {
	// Addr is the plain MQTT listener ("127.0.0.1:1883", ":0" for a
	// random port); empty: none (TLS only).
	Addr string
	// TLSAddr and TLS add an MQTTS listener (":8883"). With TLS.ClientCAs
	// set and ClientAuth VerifyClientCertIfGiven, an agent may log in
	// with a certificate naming urn:bbf:usp:id:<endpoint-id> instead of
	// a password.
	TLSAddr string
	TLS     *tls.Config
	// Auth, when set, makes every client log in: Duet itself with the
	// generated ControllerCredentials, agents with their endpoint ID as
	// username and their secret as password (or a certificate). An agent
	// may then publish only to ControllerTopic (and below it), subscribe
	// only to its AgentTopic (and below it), and only records whose
	// from_id is its login (issue 15 §2). Nil: anyone connects and
	// reads everything; cmd/duet allows that on loopback only.
	Auth usp.AgentAuthenticator
	// ControllerTopic: required with Auth.
	ControllerTopic string
	// AgentTopic is the pattern of an agent's own topic; default
	// DefaultAgentTopic.
	AgentTopic string
	// MaxPacketSize; default DefaultMaxPacketSize. Larger packets close
	// the connection before their body is read.
	MaxPacketSize uint32
	Logger        *slog.Logger
}

// Broker is the embedded MQTT broker `duet serve` runs when no external one
// is configured (docs/architecture.md, processes and defaults).
type Broker struct {
	srv     *mochi.Server
	addr    string
	tlsAddr string
	user    string
	pass    string
	once    sync.Once
	err     error
}

// StartEmbeddedBroker starts mochi-mqtt (MQTT 3.1.1 and 5) without
// authentication on addr ("127.0.0.1:1883", ":0" for a random port).
func StartEmbeddedBroker(addr string) (*Broker, error) {
	return StartBroker(BrokerOptions{Addr: addr})
}

// StartBroker starts mochi-mqtt with o.
func StartBroker(o BrokerOptions) (*Broker, error) {
	if o.Addr == "" && o.TLSAddr == "" {
		return nil, errors.New("usp/mqtt: embedded broker: no listener (BrokerOptions.Addr or TLSAddr)")
	}
	if o.TLSAddr != "" && o.TLS == nil {
		return nil, errors.New("usp/mqtt: embedded broker: BrokerOptions.TLSAddr needs TLS")
	}
	if o.Auth != nil && o.ControllerTopic == "" {
		return nil, errors.New("usp/mqtt: embedded broker: BrokerOptions.Auth needs ControllerTopic")
	}
	if o.AgentTopic == "" {
		o.AgentTopic = DefaultAgentTopic
	}
	if !strings.Contains(o.AgentTopic, "{endpoint}") {
		return nil, fmt.Errorf("usp/mqtt: embedded broker: agent topic %q must contain {endpoint}", o.AgentTopic)
	}
	if o.MaxPacketSize == 0 {
		o.MaxPacketSize = DefaultMaxPacketSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	// Listen ourselves first so a port in use gives a clear error.
	var real, realTLS string
	for _, a := range []struct {
		addr string
		out  *string
	}{{o.Addr, &real}, {o.TLSAddr, &realTLS}} {
		if a.addr == "" {
			continue
		}
		l, err := net.Listen("tcp", a.addr)
		if err != nil {
			return nil, fmt.Errorf("usp/mqtt: embedded broker cannot listen on %s (port in use or not allowed?): %w", a.addr, err)
		}
		*a.out = l.Addr().String()
		_ = l.Close()
	}
	caps := brokerCapabilities()
	caps.MaximumPacketSize = o.MaxPacketSize
	srv := mochi.New(&mochi.Options{InlineClient: false, Capabilities: caps, ClientNetReadBufferSize: clientReadBuffer,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	b := &Broker{srv: srv}
	var err error
	if o.Auth == nil {
		err = srv.AddHook(new(auth.AllowHook), nil)
		if err == nil {
			err = srv.AddHook(&sizeHook{max: o.MaxPacketSize}, nil)
		}
	} else {
		b.user = "duet-controller"
		b.pass = randomSecret()
		err = srv.AddHook(&agentHook{o: o, user: b.user, pass: b.pass, log: o.Logger.With("component", "usp-mqtt-broker")}, nil)
	}
	if err != nil {
		return nil, fmt.Errorf("usp/mqtt: embedded broker: %w", err)
	}
	if real != "" {
		tcp := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "duet-tcp", Address: real})
		if err := srv.AddListener(tcp); err != nil {
			return nil, fmt.Errorf("usp/mqtt: embedded broker cannot listen on %s: %w", real, err)
		}
		b.addr = tcp.Address()
	}
	if realTLS != "" {
		tl := listeners.NewTCP(listeners.Config{Type: "tcp", ID: "duet-tls", Address: realTLS, TLSConfig: o.TLS})
		if err := srv.AddListener(tl); err != nil {
			return nil, fmt.Errorf("usp/mqtt: embedded broker cannot listen on %s: %w", realTLS, err)
		}
		b.tlsAddr = tl.Address()
	}
	if err := srv.Serve(); err != nil { // Serve starts the listeners and returns
		_ = srv.Close()
		return nil, fmt.Errorf("usp/mqtt: embedded broker: %w", err)
	}
	return b, nil
}

// Memory per agent (docs/scaling.md): mochi allocates each client's
// outbound queue in full when it connects, 8,192 packet pointers (64 KiB)
// by default, and a 2 KiB read buffer. An agent is sent a few records at a
// time (at most usp.Options.MaxInFlightPerAgent requests); the adapter's
// own connection, which carries every agent's records, drains its queue as
// fast as they come. A packet that finds the queue full is dropped and
// counted by mochi; agents retry an unanswered Notify (TR-369
// "Notifications").
const (
	clientWritesPending = 512
	clientReadBuffer    = 1024
)

func brokerCapabilities() *mochi.Capabilities {
	c := mochi.NewDefaultServerCapabilities()
	c.MaximumClientWritesPending = clientWritesPending
	return c
}

func randomSecret() string {
	var r [24]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return hex.EncodeToString(r[:])
}

// Addr is the host:port of the plain listener ("" without one).
func (b *Broker) Addr() string { return b.addr }

// TLSAddr is the host:port of the MQTTS listener ("" without one).
func (b *Broker) TLSAddr() string { return b.tlsAddr }

// URL is the broker URL for Options.BrokerURL: the plain listener, or
// the TLS one when there is no plain listener.
func (b *Broker) URL() string {
	if b.addr == "" {
		return "tls://" + b.tlsAddr
	}
	return "mqtt://" + b.addr
}

// ControllerCredentials are the username and password Duet's own MQTT
// client uses with authentication on (generated at every start, never
// stored); empty without.
func (b *Broker) ControllerCredentials() (username, password string) { return b.user, b.pass }

// Close stops the broker. Safe to call twice.
func (b *Broker) Close() error {
	b.once.Do(func() {
		if err := b.srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			b.err = err
		}
	})
	return b.err
}

// sizeHook announces the maximum packet size in CONNACK (MQTT 5
// §3.2.2.3.6); mochi enforces it when reading but does not announce it.
type sizeHook struct {
	mochi.HookBase
	max uint32
}

func (h *sizeHook) ID() string { return "duet-size" }

func (h *sizeHook) Provides(b byte) bool { return b == mochi.OnPacketEncode }

func (h *sizeHook) OnPacketEncode(_ *mochi.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0 {
		pk.Properties.MaximumPacketSize = h.max
	}
	return pk
}

// agentHook authenticates every client and confines agents (issue 15 §2).
type agentHook struct {
	mochi.HookBase
	o          BrokerOptions
	user, pass string
	log        *slog.Logger
	// who holds the identity of each connected client: "" for Duet
	// itself, the endpoint ID of an agent.
	who sync.Map // *mochi.Client → string
}

func (h *agentHook) ID() string { return "duet-agents" }

func (h *agentHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mochi.OnConnectAuthenticate, mochi.OnACLCheck, mochi.OnPublish, mochi.OnDisconnect, mochi.OnPacketEncode}, []byte{b})
}

func (h *agentHook) OnPacketEncode(_ *mochi.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && pk.ReasonCode == 0 {
		pk.Properties.MaximumPacketSize = h.o.MaxPacketSize
	}
	return pk
}

func (h *agentHook) refuse(reason string, attrs ...any) {
	usp.CountAgentRefused("mqtt", reason)
	h.log.Warn("mqtt broker refused an agent", append([]any{"reason", reason}, attrs...)...)
}

// OnConnectAuthenticate: Duet's own login, a client certificate naming
// an endpoint ID, or an endpoint ID and its secret.
func (h *agentHook) OnConnectAuthenticate(cl *mochi.Client, pk packets.Packet) bool {
	user := string(pk.Connect.Username)
	if user == h.user && subtle.ConstantTimeCompare(pk.Connect.Password, []byte(h.pass)) == 1 {
		h.who.Store(cl, "")
		return true
	}
	eid := ""
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		if certEID, ok := usp.EndpointIDFromTLS(tc.ConnectionState()); ok {
			if user != "" && user != certEID {
				h.refuse(usp.RefuseBadLogin, "username", user, "certificate", certEID, "remote", cl.Net.Remote)
				return false
			}
			eid = certEID
		}
	}
	if eid == "" {
		if reason := usp.CheckAgentLogin(context.Background(), h.o.Auth, user, string(pk.Connect.Password)); reason != "" {
			h.refuse(reason, "username", user, "remote", cl.Net.Remote)
			return false
		}
		eid = user
	}
	// A will is published by the broker for the client, past the ACL
	// and the from_id check: an agent's must pass them now.
	if pk.Connect.WillFlag {
		if !h.mayPublish(eid, pk.Connect.WillTopic) {
			h.refuse(usp.RefusePublishACL, "device", eid, "will_topic", pk.Connect.WillTopic)
			return false
		}
		if head, err := pkgusp.ReadRecordHead(pk.Connect.WillPayload); err != nil || head.FromID != eid {
			h.refuse(usp.RefuseFromID, "device", eid, "will_topic", pk.Connect.WillTopic)
			return false
		}
	}
	h.who.Store(cl, eid)
	return true
}

func (h *agentHook) OnDisconnect(cl *mochi.Client, _ error, _ bool) { h.who.Delete(cl) }

func (h *agentHook) identity(cl *mochi.Client) (eid string, ok bool) {
	v, ok := h.who.Load(cl)
	if !ok {
		return "", false
	}
	return v.(string), true
}

func (h *agentHook) mayPublish(_ string, topic string) bool {
	return topic == h.o.ControllerTopic || strings.HasPrefix(topic, h.o.ControllerTopic+"/")
}

func (h *agentHook) ownTopic(eid string) (string, bool) {
	return pkgusp.ExpandTopicPattern(h.o.AgentTopic, eid)
}

func (h *agentHook) OnACLCheck(cl *mochi.Client, topic string, write bool) bool {
	eid, ok := h.identity(cl)
	if !ok {
		return false
	}
	if eid == "" {
		return true // Duet itself
	}
	if write {
		if !h.mayPublish(eid, topic) {
			h.refuse(usp.RefusePublishACL, "device", eid, "topic", topic)
			return false
		}
		return true
	}
	own, ok := h.ownTopic(eid)
	if ok && (topic == own || strings.HasPrefix(topic, own+"/")) {
		return true
	}
	h.refuse(usp.RefuseSubscribeACL, "device", eid, "filter", topic)
	return false
}

// OnPublish binds a record to its login: from_id must be the agent's
// endpoint ID, and the reply address (Response Topic, the 3.1.1
// /reply-to= suffix, a Connect record's subscribed_topic) its own topic.
func (h *agentHook) OnPublish(cl *mochi.Client, pk packets.Packet) (packets.Packet, error) {
	eid, ok := h.identity(cl)
	if !ok {
		return pk, packets.ErrRejectPacket
	}
	if eid == "" {
		return pk, nil
	}
	head, err := pkgusp.ReadRecordHead(pk.Payload)
	if err != nil || head.FromID != eid {
		h.refuse(usp.RefuseFromID, "device", eid, "from_id", head.FromID)
		return pk, packets.ErrRejectPacket
	}
	own, _ := h.ownTopic(eid)
	replies := []string{pk.Properties.ResponseTopic, head.ReplyTo}
	if _, reply, ok := pkgusp.ParseMQTTReplyTo(pk.TopicName); ok {
		replies = append(replies, reply)
	}
	for _, r := range replies {
		if r != "" && r != own && !strings.HasPrefix(r, own+"/") {
			h.refuse(usp.RefuseReplyTo, "device", eid, "reply", r)
			return pk, packets.ErrRejectPacket
		}
	}
	return pk, nil
}
