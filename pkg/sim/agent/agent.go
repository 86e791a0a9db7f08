// Package agent is a simulated USP Agent that behaves on the wire like the
// Broadband Forum's reference agent obuspa 11 (docs/testing.md, TR-369 "Message Transfer Protocols"–9).
//
// The core (Agent) is transport-agnostic: HandleRecord answers a record and
// Outgoing delivers what the agent sends on its own (notifications, their
// retries, restarts). The MTP clients (DialMQTT, DialSTOMP, DialWebSocket)
// run an Agent over a real broker or a Controller's WebSocket server.
package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// Config describes one simulated agent. Zero values take the defaults shown.
type Config struct {
	OUI             string // ManufacturerOUI, default "00256D" (the BBF example OUI)
	SerialNumber    string // required
	ProductClass    string // default "SimGateway"
	Manufacturer    string // default "Duet Simulator"
	ModelName       string // default "SimAgent"
	SoftwareVersion string // default "1.0.0"
	HardwareVersion string // default "1.0"

	// ControllerID is provisioned as Device.LocalAgent.Controller.1.EndpointID;
	// records from any other endpoint are ignored (TR-369 "Handling of Records", R-MTP.5). Required.
	ControllerID string
	// MTPProtocol fills Device.LocalAgent.MTP.1.Protocol; default "MQTT".
	MTPProtocol string

	// RetryMinWait and RetryMultiplier override the Notify retry parameters
	// m and k of TR-369 Notify retry (Controller.1.USPNotifRetryMinimumWaitInterval
	// in seconds and ...IntervalMultiplier). Zero uses the data model values
	// (5 s, 2000). Tests set a few milliseconds.
	RetryMinWait    time.Duration
	RetryMultiplier uint32

	// PeriodicInterval overrides Controller.1.PeriodicNotifInterval (s,
	// default 86400) as the period of Device.LocalAgent.Periodic!, sent to
	// matching Event subscriptions (TR-181 Device.LocalAgent events). Tests set milliseconds.
	PeriodicInterval time.Duration

	// AsyncDelay is how long the asynchronous diagnostics take besides
	// their real work (a transfer test's HTTP exchange); default 50 ms.
	AsyncDelay time.Duration
	// TimerUnit is what one DelaySeconds of ScheduleTimer() lasts; default
	// one second (tests shorten it).
	TimerUnit time.Duration

	// RebootDowntime is how long the agent stays away (its MTP
	// disconnected) after Reboot() or FactoryReset() before it reconnects
	// and sends Boot!, as a real device takes a while to restart. Default
	// 0: at once. RebootNeverReturns rigs a device that never comes back.
	RebootDowntime     time.Duration
	RebootNeverReturns bool

	// NoFactorySubscription leaves out the factory-default Boot!
	// subscription real agents ship with (a persistent Event subscription
	// on Device.Boot! for the provisioned Controller), so a Boot! goes
	// only to the subscriptions a Controller created.
	NoFactorySubscription bool

	// OutgoingQueue bounds the queue behind Outgoing; default 256. When it
	// is full new items are dropped and counted (see Dropped): a Notify with
	// send_resp is sent again by its retry anyway.
	OutgoingQueue int

	// Now is the clock for UpTime; default time.Now.
	Now func() time.Time

	// FirmwareFailure rigs FirmwareImage.{i}.Download(): "" works,
	// FirmwareBadChecksum, FirmwareNotFound or FirmwareBootOld fail as
	// named (files.go).
	FirmwareFailure string
	// HTTPClient fetches and uploads files (Download(), Backup(),
	// Restore()); default one with a 5-minute timeout.
	HTTPClient *http.Client
}

func (c *Config) defaults() error {
	if c.SerialNumber == "" {
		return errors.New("agent: Config.SerialNumber is required")
	}
	if c.ControllerID == "" {
		return errors.New("agent: Config.ControllerID is required")
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.OUI, "00256D")
	def(&c.ProductClass, "SimGateway")
	def(&c.Manufacturer, "Duet Simulator")
	def(&c.ModelName, "SimAgent")
	def(&c.SoftwareVersion, "1.0.0")
	def(&c.HardwareVersion, "1.0")
	def(&c.MTPProtocol, "MQTT")
	switch c.MTPProtocol {
	case "MQTT", "STOMP", "WebSocket", "UDS":
	default:
		return fmt.Errorf("agent: Config.MTPProtocol %q is not MQTT, STOMP, WebSocket or UDS", c.MTPProtocol)
	}
	if c.AsyncDelay == 0 {
		c.AsyncDelay = 50 * time.Millisecond
	}
	if c.TimerUnit == 0 {
		c.TimerUnit = time.Second
	}
	if c.OutgoingQueue == 0 {
		c.OutgoingQueue = 256
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	switch c.FirmwareFailure {
	case "", FirmwareBadChecksum, FirmwareNotFound, FirmwareBootOld:
	default:
		return fmt.Errorf("agent: Config.FirmwareFailure %q is not one of %q, %q, %q", c.FirmwareFailure, FirmwareBadChecksum, FirmwareNotFound, FirmwareBootOld)
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 5 * time.Minute}
	}
	return nil
}

// Outgoing is one item the agent sends on its own initiative.
type Outgoing struct {
	// Record is a serialized USP Record for the Controller, nil when
	// Restart is set.
	Record []byte
	// Restart says the agent rebooted: the MTP drops its connection,
	// reconnects and sends its Connect record before anything that follows
	// (R-MTP.6, R-MTP.8).
	Restart bool
	// Downtime is how long the MTP stays disconnected after a Restart;
	// Gone: it never reconnects (a device that did not come back).
	Downtime time.Duration
	Gone     bool
}

// Agent is one simulated USP agent. Its methods are safe for concurrent use.
type Agent struct {
	cfg Config
	id  string

	mu       sync.Mutex
	m        *model
	factory  *model // the model as first built: FactoryReset() returns to it
	bootTime time.Time
	boots    int
	seq      uint64
	pending  map[string]*pendingNotify // msg_id → Notify awaiting NotifyResp
	timers   map[*time.Timer]struct{}
	closed   bool
	// bootCommandKey and bootCause survive the reboot, as obuspa persists
	// them, and go into the next Boot! (TR-181 Device.LocalAgent events).
	bootCommandKey, bootCause string
	// bootFirmwareUpdated goes into the next Boot! (an activation).
	bootFirmwareUpdated bool
	// ctx ends file transfers running off the lock when the agent closes.
	ctx    context.Context
	cancel context.CancelFunc

	out     chan Outgoing
	dropped uint64
	ignored uint64
}

type pendingNotify struct {
	record  []byte
	attempt int
	timer   *time.Timer
}

// New builds an agent with its factory-default data model.
func New(cfg Config) (*Agent, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	a := &Agent{
		cfg:     cfg,
		id:      usp.OSEndpointID(cfg.OUI, cfg.SerialNumber),
		pending: map[string]*pendingNotify{},
		timers:  map[*time.Timer]struct{}{},
		out:     make(chan Outgoing, cfg.OutgoingQueue),
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.m = a.factoryModel()
	a.factory = a.m.clone()
	a.bootTime = cfg.Now()
	a.mu.Lock()
	a.schedulePeriodic()
	a.mu.Unlock()
	return a, nil
}

// schedulePeriodic arms the next Periodic! event; a.mu is held.
func (a *Agent) schedulePeriodic() {
	d := a.cfg.PeriodicInterval
	if d == 0 {
		s, _ := strconv.ParseUint(a.m.values["Device.LocalAgent.Controller.1.PeriodicNotifInterval"], 10, 32)
		d = time.Duration(max(s, 1)) * time.Second
	}
	a.after(d, func() {
		for _, s := range a.matching("Event", "Device.LocalAgent.Periodic!") {
			a.sendNotify(s.id, s.retry, &uspmsg.Notify{Notification: &uspmsg.Notify_Event_{Event: &uspmsg.Notify_Event{
				ObjPath: "Device.LocalAgent.", EventName: "Periodic!",
			}}})
		}
		a.schedulePeriodic()
	})
}

func (a *Agent) factoryModel() *model {
	m := newModel()
	m.ensureObject("Device.DeviceInfo.")
	m.ensureObject("Device.LocalAgent.")
	m.ensureObject("Device.WiFi.")
	m.ensureObject("Device.NAT.")
	m.ensureObject("Device.IP.Diagnostics.")
	m.ensureObject("Device.DNS.Diagnostics.")
	c := a.cfg
	for k, v := range map[string]string{
		"Device.DeviceInfo.Manufacturer":       c.Manufacturer,
		"Device.DeviceInfo.ManufacturerOUI":    c.OUI,
		"Device.DeviceInfo.ModelName":          c.ModelName,
		"Device.DeviceInfo.ProductClass":       c.ProductClass,
		"Device.DeviceInfo.SerialNumber":       c.SerialNumber,
		"Device.DeviceInfo.SoftwareVersion":    c.SoftwareVersion,
		"Device.DeviceInfo.HardwareVersion":    c.HardwareVersion,
		"Device.DeviceInfo.ProvisioningCode":   "",
		"Device.LocalAgent.EndpointID":         a.id,
		"Device.LocalAgent.SoftwareVersion":    c.SoftwareVersion,
		"Device.LocalAgent.SupportedProtocols": "MQTT,STOMP,WebSocket",
	} {
		m.values[k] = v
	}
	mtp := m.addInstance("Device.LocalAgent.MTP.")
	m.values[mtp+"Alias"] = "cpe-1"
	m.values[mtp+"Enable"] = "true"
	m.values[mtp+"Protocol"] = c.MTPProtocol
	m.values[mtp+"Status"] = "Up"
	ctrl := m.addInstance("Device.LocalAgent.Controller.")
	m.values[ctrl+"Alias"] = "cpe-1"
	m.values[ctrl+"EndpointID"] = c.ControllerID
	m.values[ctrl+"Enable"] = "true"
	m.values[ctrl+"AssignedRole"] = "Device.LocalAgent.ControllerTrust.Role.1"
	for i, name := range []string{"sim-2g", "sim-5g"} {
		s := m.addInstance("Device.WiFi.SSID.")
		m.values[s+"Alias"] = "cpe-" + strconv.Itoa(i+1)
		m.values[s+"Name"] = "ssid" + strconv.Itoa(i)
		m.values[s+"SSID"] = name
		m.values[s+"Status"] = "Up"
	}
	a.addFileModel(m)
	// The operator's factory configuration reports the software version
	// in every Boot! (TR-181 Controller.{i}.BootParameter.{i}.).
	bp := m.addInstance(ctrl + "BootParameter.")
	m.values[bp+"Alias"] = "cpe-1"
	m.values[bp+"Enable"] = "true"
	m.values[bp+"ParameterName"] = "Device.DeviceInfo.SoftwareVersion"
	m.next["Device.NAT.PortMapping."] = 1
	m.next["Device.LocalAgent.Subscription."] = 1
	if !c.NoFactorySubscription {
		// Agents ship subscribed to their own Boot! for the provisioned
		// Controller (obuspa's factory reset database does, for one): a
		// reboot then reaches the Controller even before it subscribed,
		// and one Boot! goes to each matching subscription (TR-369
		// "Notification Types": one Notify per subscription).
		sub := m.addInstance("Device.LocalAgent.Subscription.")
		for k, v := range map[string]string{
			"Alias": "cpe-boot", "Enable": "true", "ID": "factory-boot", "Recipient": ctrl[:len(ctrl)-1],
			"NotifType": "Event", "ReferenceList": "Device.Boot!", "Persistent": "true", "NotifRetry": "true",
			"TimeToLive": "0", "NotifExpiration": "0",
		} {
			m.values[sub+k] = v
		}
	}
	m.next["Device.LocalAgent.Request."] = 1
	return m
}

// EndpointID is the agent's ID, os::<OUI>-<SerialNumber> (TR-369 "Endpoint Identifier").
func (a *Agent) EndpointID() string { return a.id }

// ControllerID is the EndpointID of Device.LocalAgent.Controller.1.
func (a *Agent) ControllerID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.controllerID()
}

func (a *Agent) controllerID() string {
	return a.m.values["Device.LocalAgent.Controller.1.EndpointID"]
}

// Outgoing delivers the records the agent sends on its own. Exactly one
// consumer (the MTP client) should read it. It is closed by Close.
func (a *Agent) Outgoing() <-chan Outgoing { return a.out }

// Dropped counts Outgoing items dropped because the queue was full.
func (a *Agent) Dropped() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.dropped
}

// Ignored counts records dropped without an answer: not for us, not from a
// known Controller, or faulty in a way R-MTP.5 does not allow answering.
func (a *Agent) Ignored() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ignored
}

// Boots counts reboots and factory resets since New.
func (a *Agent) Boots() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.boots
}

// PendingNotifies counts Notify messages still waiting for a NotifyResp.
func (a *Agent) PendingNotifies() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.pending)
}

// Close stops every timer and closes Outgoing. It is safe to call twice.
func (a *Agent) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	a.cancel()
	for t := range a.timers {
		t.Stop()
	}
	a.timers = nil
	for _, p := range a.pending {
		p.timer.Stop()
	}
	a.pending = nil
	close(a.out)
	return nil
}

// emit queues an item for Outgoing; a.mu is held.
func (a *Agent) emit(o Outgoing) {
	if a.closed {
		return
	}
	select {
	case a.out <- o:
	default:
		a.dropped++
	}
}

// after runs f under a.mu after d unless the agent is closed first.
func (a *Agent) after(d time.Duration, f func()) *time.Timer {
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.closed {
			return
		}
		delete(a.timers, t)
		f()
	})
	a.timers[t] = struct{}{}
	return t
}

func (a *Agent) nextMsgID(prefix string) string {
	a.seq++
	return prefix + "-" + strconv.Itoa(a.boots) + "-" + strconv.FormatUint(a.seq, 10)
}

// HandleRecord processes one record received from the MTP and returns the
// records to send back on the same MTP (R-MSG.0a). Notifications caused by
// the request go to Outgoing.
func (a *Agent) HandleRecord(rec []byte) (replies [][]byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	r, err := usp.ParseRecord(rec, a.id)
	if err != nil {
		var pe *usp.ParseError
		if errors.As(err, &pe) && pe.Replyable && a.isController(pe.FromID) {
			// R-MTP.5: answer a faulty request when its msg_id is known.
			if b, err := usp.MarshalMsgRecord(a.id, pe.FromID, usp.NewError(pe.MsgID, pe.Code, pe.Reason)); err == nil {
				return [][]byte{b}
			}
		}
		a.ignored++
		return nil
	}
	if !a.isController(r.FromID) {
		a.ignored++ // obuspa ignores unknown Controllers (TR-369 "Handling of Records", R-MTP.5)
		return nil
	}
	if r.Kind != usp.RecordMsg {
		// Connect and Disconnect records need no reply; without E2E
		// sessions there is no state to forget.
		return nil
	}
	resp := a.handleMsg(r)
	if resp == nil {
		return nil
	}
	b, err := usp.MarshalMsgRecord(a.id, r.FromID, resp)
	if err != nil {
		return nil
	}
	return [][]byte{b}
}

func (a *Agent) isController(id string) bool {
	if id == "" {
		return false
	}
	for _, c := range a.m.instances("Device.LocalAgent.Controller.") {
		if a.m.values[c+"EndpointID"] == id {
			return true
		}
	}
	return false
}

// handleMsg dispatches on the body type (R-MSG.10) and returns the reply,
// or nil when none is due.
func (a *Agent) handleMsg(r *usp.Record) *uspmsg.Msg {
	id := r.MsgID
	body := r.Msg.GetBody()
	if resp := body.GetResponse(); resp != nil {
		if nr := resp.GetNotifyResp(); nr != nil {
			a.acknowledge(id)
		}
		return nil
	}
	if body.GetError() != nil {
		// An Error answering one of our Notifies still ends its retries:
		// the Controller has seen it (TR-369 "Notify").
		a.acknowledge(id)
		return nil
	}
	req := body.GetRequest()
	switch rt := req.GetReqType().(type) {
	case *uspmsg.Request_Get:
		return usp.NewResponse(id, &uspmsg.Response{RespType: &uspmsg.Response_GetResp{GetResp: a.get(rt.Get)}})
	case *uspmsg.Request_GetSupportedDm:
		return usp.NewResponse(id, &uspmsg.Response{RespType: &uspmsg.Response_GetSupportedDmResp{GetSupportedDmResp: a.getSupportedDM(rt.GetSupportedDm)}})
	case *uspmsg.Request_GetInstances:
		return usp.NewResponse(id, &uspmsg.Response{RespType: &uspmsg.Response_GetInstancesResp{GetInstancesResp: a.getInstances(rt.GetInstances)}})
	case *uspmsg.Request_GetSupportedProtocol:
		return usp.NewResponse(id, &uspmsg.Response{RespType: &uspmsg.Response_GetSupportedProtocolResp{
			GetSupportedProtocolResp: &uspmsg.GetSupportedProtocolResp{AgentSupportedProtocolVersions: usp.AgentSupportedVersions},
		}})
	case *uspmsg.Request_Set:
		return a.set(id, rt.Set)
	case *uspmsg.Request_Add:
		return a.add(id, rt.Add, r.FromID)
	case *uspmsg.Request_Delete:
		return a.delete(id, rt.Delete)
	case *uspmsg.Request_Operate:
		return a.operate(id, rt.Operate, r.FromID)
	default:
		// Notify, Register and Deregister flow Agent→Controller (TR-369 "Message structure").
		return usp.NewError(id, usp.ErrCodeMessageNotSupported, "message not supported by an Agent")
	}
}

// retryWait draws the wait before retry n (1-based) from
// [m·(k/1000)^(n−1), m·(k/1000)^n], fixed from n = 10 on (TR-369 Notify retry).
func (a *Agent) retryWait(n int) time.Duration {
	m := a.cfg.RetryMinWait
	k := float64(a.cfg.RetryMultiplier)
	if m == 0 {
		s, _ := strconv.ParseUint(a.m.values["Device.LocalAgent.Controller.1.USPNotifRetryMinimumWaitInterval"], 10, 32)
		m = time.Duration(s) * time.Second
	}
	if k == 0 {
		v, _ := strconv.ParseUint(a.m.values["Device.LocalAgent.Controller.1.USPNotifRetryIntervalMultiplier"], 10, 32)
		k = float64(v)
	}
	if k < 1000 {
		k = 1000
	}
	if n > 10 {
		n = 10
	}
	lo := float64(m)
	for i := 1; i < n; i++ {
		lo *= k / 1000
	}
	hi := lo * k / 1000
	return time.Duration(lo + rand.Float64()*(hi-lo))
}
