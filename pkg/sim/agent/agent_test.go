package agent_test

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

const ctrlID = "self::duet-test-controller"

// checkFor polls fn until it returns nil or the deadline passes.
func checkFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ctl is a minimal test-side Controller speaking to an Agent core.
type ctl struct {
	t *testing.T
	a *agent.Agent
	n int
}

func newAgent(t *testing.T, serial string) *ctl {
	t.Helper()
	a, err := agent.New(agent.Config{SerialNumber: serial, ControllerID: ctrlID, NoFactorySubscription: true,
		RetryMinWait: 20 * time.Millisecond, RetryMultiplier: 1000, AsyncDelay: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return &ctl{t: t, a: a}
}

func (c *ctl) id() string { c.n++; return "m" + itoa(c.n) }

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	s := ""
	for n > 0 {
		s = string(rune('0'+n%10)) + s
		n /= 10
	}
	return s
}

// do sends m and returns the single reply, parsed.
func (c *ctl) do(m *uspmsg.Msg) *usp.Record {
	c.t.Helper()
	b, err := usp.MarshalMsgRecord(ctrlID, c.a.EndpointID(), m)
	if err != nil {
		c.t.Fatal(err)
	}
	replies := c.a.HandleRecord(b)
	if len(replies) != 1 {
		c.t.Fatalf("%d replies, want 1", len(replies))
	}
	r, err := usp.ParseRecord(replies[0], ctrlID)
	if err != nil {
		c.t.Fatal(err)
	}
	if r.MsgID != m.GetHeader().GetMsgId() || r.FromID != c.a.EndpointID() {
		c.t.Fatalf("reply msg_id %q from %q", r.MsgID, r.FromID)
	}
	return r
}

// next returns the next Outgoing item within a deadline.
func (c *ctl) next() agent.Outgoing {
	c.t.Helper()
	select {
	case o := <-c.a.Outgoing():
		return o
	case <-time.After(5 * time.Second):
		c.t.Fatal("no outgoing record")
	}
	return agent.Outgoing{}
}

func (c *ctl) nextNotify() (*usp.Record, *uspmsg.Notify) {
	c.t.Helper()
	o := c.next()
	if o.Restart {
		c.t.Fatal("unexpected restart")
	}
	r, err := usp.ParseRecord(o.Record, ctrlID)
	if err != nil {
		c.t.Fatal(err)
	}
	n := r.Msg.GetBody().GetRequest().GetNotify()
	if n == nil {
		c.t.Fatalf("not a notify: %v", r.Msg)
	}
	return r, n
}

func (c *ctl) noOutgoing() {
	c.t.Helper()
	select {
	case o := <-c.a.Outgoing():
		c.t.Fatalf("unexpected outgoing item %+v", o)
	default:
	}
}

func (c *ctl) subscribe(id, typ, refs string, persistent, retry bool) string {
	c.t.Helper()
	r := c.do(usp.NewAdd(c.id(), false, []usp.ObjectSettings{{Path: "Device.LocalAgent.Subscription.", Params: []usp.ParamSetting{
		{Param: "ID", Value: id}, {Param: "Enable", Value: "true"}, {Param: "NotifType", Value: typ},
		{Param: "ReferenceList", Value: refs}, {Param: "Persistent", Value: usp.FormatBool(persistent)},
		{Param: "NotifRetry", Value: usp.FormatBool(retry)},
	}}}))
	succ := r.Msg.GetBody().GetResponse().GetAddResp().GetCreatedObjResults()[0].GetOperStatus().GetOperSuccess()
	if succ == nil {
		c.t.Fatalf("subscription add failed: %v", r.Msg)
	}
	return succ.GetInstantiatedPath()
}

func TestConfigValidation(t *testing.T) {
	if _, err := agent.New(agent.Config{ControllerID: ctrlID}); err == nil {
		t.Fatal("missing serial accepted")
	}
	if _, err := agent.New(agent.Config{SerialNumber: "1"}); err == nil {
		t.Fatal("missing controller accepted")
	}
	if _, err := agent.New(agent.Config{SerialNumber: "1", ControllerID: ctrlID, MTPProtocol: "CoAP"}); err == nil || !strings.Contains(err.Error(), "MTPProtocol") {
		t.Fatalf("bad MTP: %v", err)
	}
}

func TestGet(t *testing.T) {
	c := newAgent(t, "SN1")
	if c.a.EndpointID() != "os::00256D-SN1" {
		t.Fatalf("endpoint id %q", c.a.EndpointID())
	}
	r := c.do(usp.NewGet(c.id(), []string{
		"Device.DeviceInfo.", "Device.DeviceInfo.SerialNumber", "Device.WiFi.SSID.*.SSID", "Device.Nope.",
		"Device.WiFi.SSID.9.SSID", "Device.NAT.PortMapping.*.Enable", "Device.LocalAgent.",
	}, 0))
	res := r.Msg.GetBody().GetResponse().GetGetResp().GetReqPathResults()
	if len(res) != 7 {
		t.Fatalf("%d results", len(res))
	}
	di := res[0].GetResolvedPathResults()
	// DeviceInfo itself, then its two firmware images and its
	// configuration file (TR-181 FirmwareImage.{i}., VendorConfigFile.{i}.).
	if len(di) != 4 || di[1].GetResolvedPath() != "Device.DeviceInfo.FirmwareImage.1." || di[1].GetResultParams()["Status"] != "Active" ||
		di[0].GetResolvedPath() != "Device.DeviceInfo." || di[0].GetResultParams()["ManufacturerOUI"] != "00256D" ||
		di[0].GetResultParams()["UpTime"] == "" {
		t.Fatalf("DeviceInfo: %v", di)
	}
	if p := res[1].GetResolvedPathResults(); len(p) != 1 || p[0].GetResolvedPath() != "Device.DeviceInfo." || p[0].GetResultParams()["SerialNumber"] != "SN1" {
		t.Fatalf("param path: %v", p)
	}
	if p := res[2].GetResolvedPathResults(); len(p) != 2 || p[1].GetResolvedPath() != "Device.WiFi.SSID.2." {
		t.Fatalf("search: %v", p)
	}
	if res[3].GetErrCode() != 7026 || res[4].GetErrCode() != 7026 {
		t.Fatalf("missing paths: %d %d", res[3].GetErrCode(), res[4].GetErrCode())
	}
	if res[5].GetErrCode() != 0 || len(res[5].GetResolvedPathResults()) != 0 {
		t.Fatalf("empty search: %v", res[5])
	}
	// Each sub-object gets its own result; the controller row is there.
	found := false
	for _, rp := range res[6].GetResolvedPathResults() {
		if rp.GetResolvedPath() == "Device.LocalAgent.Controller.1." && rp.GetResultParams()["EndpointID"] == ctrlID {
			found = true
		}
	}
	if !found {
		t.Fatalf("LocalAgent subtree lacks Controller.1: %v", res[6])
	}
	// max_depth 1: only the object's own params.
	r = c.do(usp.NewGet(c.id(), []string{"Device.LocalAgent."}, 1))
	if p := r.Msg.GetBody().GetResponse().GetGetResp().GetReqPathResults()[0].GetResolvedPathResults(); len(p) != 1 {
		t.Fatalf("max_depth 1 gave %d results", len(p))
	}
}

func TestSetAllowPartialRequired(t *testing.T) {
	c := newAgent(t, "SN2")
	// Success; updated_params lists the value after the set.
	r := c.do(usp.NewSet(c.id(), false, []usp.ObjectSettings{{Path: "Device.WiFi.SSID.1.", Params: []usp.ParamSetting{
		{Param: "SSID", Value: "home", Required: true}, {Param: "Enable", Value: "0"},
	}}}))
	ok := r.Msg.GetBody().GetResponse().GetSetResp().GetUpdatedObjResults()[0].GetOperStatus().GetOperSuccess()
	if ok == nil || ok.GetUpdatedInstResults()[0].GetUpdatedParams()["Enable"] != "false" {
		t.Fatalf("set: %v", r.Msg)
	}
	if v, _ := c.a.Parameter("Device.WiFi.SSID.1.SSID"); v != "home" {
		t.Fatalf("SSID %q", v)
	}
	// allow_partial=false + required failure: Error, nothing changes (TR-369 "allow_partial and required").
	r = c.do(usp.NewSet(c.id(), false, []usp.ObjectSettings{
		{Path: "Device.WiFi.SSID.2.", Params: []usp.ParamSetting{{Param: "SSID", Value: "changed", Required: true}}},
		{Path: "Device.WiFi.SSID.1.", Params: []usp.ParamSetting{{Param: "Enable", Value: "maybe", Required: true}}},
	}))
	e := r.Msg.GetBody().GetError()
	if e == nil || e.GetErrCode() != 7021 || len(e.GetParamErrs()) != 1 || e.GetParamErrs()[0].GetParamPath() != "Device.WiFi.SSID.1.Enable" ||
		e.GetParamErrs()[0].GetErrCode() != 7011 {
		t.Fatalf("want Error 7021 with 7011 param error, got %v", r.Msg)
	}
	if v, _ := c.a.Parameter("Device.WiFi.SSID.2.SSID"); v != "sim-5g" {
		t.Fatalf("allow_partial=false changed SSID.2 to %q", v)
	}
	// allow_partial=true: the failing object fails alone; a non-required
	// failure is reported in param_errs of a success.
	r = c.do(usp.NewSet(c.id(), true, []usp.ObjectSettings{
		{Path: "Device.WiFi.SSID.2.", Params: []usp.ParamSetting{{Param: "SSID", Value: "changed", Required: true}, {Param: "Status", Value: "Down"}}},
		{Path: "Device.WiFi.SSID.1.", Params: []usp.ParamSetting{{Param: "Enable", Value: "maybe", Required: true}}},
		{Path: "Device.WiFi.SSID.7.", Params: []usp.ParamSetting{{Param: "SSID", Value: "x"}}},
		{Path: "Device.Bogus.", Params: []usp.ParamSetting{{Param: "X", Value: "x"}}},
	}))
	objs := r.Msg.GetBody().GetResponse().GetSetResp().GetUpdatedObjResults()
	if len(objs) != 4 {
		t.Fatalf("%d results", len(objs))
	}
	s0 := objs[0].GetOperStatus().GetOperSuccess()
	if s0 == nil || s0.GetUpdatedInstResults()[0].GetParamErrs()[0].GetErrCode() != 7013 {
		t.Fatalf("obj 0: %v", objs[0])
	}
	if f := objs[1].GetOperStatus().GetOperFailure(); f == nil || f.GetErrCode() != 7021 || f.GetUpdatedInstFailures()[0].GetAffectedPath() != "Device.WiFi.SSID.1." {
		t.Fatalf("obj 1: %v", objs[1])
	}
	if f := objs[2].GetOperStatus().GetOperFailure(); f == nil || f.GetErrCode() != 7016 {
		t.Fatalf("obj 2: %v", objs[2])
	}
	if f := objs[3].GetOperStatus().GetOperFailure(); f == nil || f.GetErrCode() != 7026 {
		t.Fatalf("obj 3: %v", objs[3])
	}
	if v, _ := c.a.Parameter("Device.WiFi.SSID.2.SSID"); v != "changed" {
		t.Fatalf("SSID.2 %q", v)
	}
}

func TestAddDeletePortMapping(t *testing.T) {
	c := newAgent(t, "SN3")
	add := func(port string) *usp.Record {
		return c.do(usp.NewAdd(c.id(), true, []usp.ObjectSettings{{Path: "Device.NAT.PortMapping.", Params: []usp.ParamSetting{
			{Param: "ExternalPort", Value: port, Required: true}, {Param: "InternalClient", Value: "192.0.2.5"}, {Param: "Bogus", Value: "1"},
		}}}))
	}
	r := add("8080")
	s := r.Msg.GetBody().GetResponse().GetAddResp().GetCreatedObjResults()[0].GetOperStatus().GetOperSuccess()
	if s.GetInstantiatedPath() != "Device.NAT.PortMapping.1." || s.GetUniqueKeys()["Alias"] != "cpe-1" || s.GetUniqueKeys()["ExternalPort"] != "8080" ||
		len(s.GetParamErrs()) != 1 || s.GetParamErrs()[0].GetErrCode() != 7010 {
		t.Fatalf("add: %v", s)
	}
	add("8081")
	// The same RemoteHost+ExternalPort+Protocol again: duplicate key.
	r = add("8080")
	if f := r.Msg.GetBody().GetResponse().GetAddResp().GetCreatedObjResults()[0].GetOperStatus().GetOperFailure(); f == nil || f.GetErrCode() != 7025 {
		t.Fatalf("duplicate: %v", r.Msg)
	}
	r = c.do(usp.NewAdd(c.id(), false, []usp.ObjectSettings{{Path: "Device.WiFi.SSID."}}))
	if e := r.Msg.GetBody().GetError(); e == nil || e.GetErrCode() != 7019 {
		t.Fatalf("non-creatable: %v", r.Msg)
	}
	r = c.do(usp.NewAdd(c.id(), false, []usp.ObjectSettings{{Path: "Device.DeviceInfo."}}))
	if e := r.Msg.GetBody().GetError(); e == nil || e.GetErrCode() != 7018 {
		t.Fatalf("not a table: %v", r.Msg)
	}
	r = c.do(usp.NewDelete(c.id(), false, []string{"Device.NAT.PortMapping.9."}))
	if e := r.Msg.GetBody().GetError(); e == nil || e.GetErrCode() != 7016 {
		t.Fatalf("delete missing: %v", r.Msg)
	}
	r = c.do(usp.NewDelete(c.id(), true, []string{"Device.NAT.PortMapping.*.", "Device.NAT.PortMapping.9."}))
	res := r.Msg.GetBody().GetResponse().GetDeleteResp().GetDeletedObjResults()
	if got := res[0].GetOperStatus().GetOperSuccess().GetAffectedPaths(); len(got) != 2 {
		t.Fatalf("delete search: %v", res[0])
	}
	if res[1].GetOperStatus().GetOperFailure().GetErrCode() != 7016 {
		t.Fatalf("delete missing partial: %v", res[1])
	}
	// A search that now matches nothing is still a success (R-DEL.2a).
	r = c.do(usp.NewDelete(c.id(), false, []string{"Device.NAT.PortMapping.*."}))
	if s := r.Msg.GetBody().GetResponse().GetDeleteResp().GetDeletedObjResults()[0].GetOperStatus().GetOperSuccess(); s == nil || len(s.GetAffectedPaths()) != 0 {
		t.Fatalf("empty delete: %v", r.Msg)
	}
	r = c.do(usp.NewGetInstances(c.id(), []string{"Device.WiFi.SSID.", "Device.DeviceInfo."}, true))
	gi := r.Msg.GetBody().GetResponse().GetGetInstancesResp().GetReqPathResults()
	if len(gi[0].GetCurrInsts()) != 2 || gi[0].GetCurrInsts()[0].GetUniqueKeys()["Name"] != "ssid0" || gi[1].GetErrCode() != 7018 {
		t.Fatalf("get instances: %v", gi)
	}
}

func TestValueChangeRetryUntilNotifyResp(t *testing.T) {
	c := newAgent(t, "SN4")
	c.subscribe("vc", "ValueChange", "Device.WiFi.SSID.1.SSID", false, true)
	c.noOutgoing()
	// A change by anyone fires (TR-369 "Notify"): here the device itself.
	if err := c.a.SetParameter("Device.WiFi.SSID.1.SSID", "local"); err != nil {
		t.Fatal(err)
	}
	r1, n := c.nextNotify()
	if n.GetSubscriptionId() != "vc" || !n.GetSendResp() || n.GetValueChange().GetParamPath() != "Device.WiFi.SSID.1.SSID" || n.GetValueChange().GetParamValue() != "local" {
		t.Fatalf("notify: %v", n)
	}
	// No NotifyResp: the same msg_id comes again.
	r2, _ := c.nextNotify()
	if r2.MsgID != r1.MsgID {
		t.Fatalf("retry msg_id %q, want %q", r2.MsgID, r1.MsgID)
	}
	b, _ := usp.MarshalMsgRecord(ctrlID, c.a.EndpointID(), usp.NewNotifyResp(r1.MsgID, "vc"))
	if replies := c.a.HandleRecord(b); len(replies) != 0 {
		t.Fatal("NotifyResp answered")
	}
	checkFor(t, time.Second, func() error {
		if c.a.PendingNotifies() != 0 {
			return errors.New("notify still pending")
		}
		return nil
	})
	// Drain a retry that may have been queued before the ack, then expect silence.
	for len(c.a.Outgoing()) > 0 {
		<-c.a.Outgoing()
	}
	select {
	case o := <-c.a.Outgoing():
		t.Fatalf("retry after NotifyResp: %+v", o)
	case <-time.After(100 * time.Millisecond): // several retry periods
	}
	// A Controller Set of another param does not match the subscription.
	c.do(usp.NewSet(c.id(), false, []usp.ObjectSettings{{Path: "Device.WiFi.SSID.2.", Params: []usp.ParamSetting{{Param: "SSID", Value: "x"}}}}))
	c.noOutgoing()
}

func TestObjectCreationDeletion(t *testing.T) {
	c := newAgent(t, "SN5")
	c.subscribe("oc", "ObjectCreation", "Device.NAT.PortMapping.", false, false)
	c.subscribe("od", "ObjectDeletion", "Device.NAT.PortMapping.", false, false)
	c.do(usp.NewAdd(c.id(), false, []usp.ObjectSettings{{Path: "Device.NAT.PortMapping.", Params: []usp.ParamSetting{{Param: "ExternalPort", Value: "22"}}}}))
	_, n := c.nextNotify()
	if n.GetSubscriptionId() != "oc" || n.GetSendResp() || n.GetObjCreation().GetObjPath() != "Device.NAT.PortMapping.1." || n.GetObjCreation().GetUniqueKeys()["ExternalPort"] != "22" {
		t.Fatalf("creation: %v", n)
	}
	c.do(usp.NewDelete(c.id(), false, []string{"Device.NAT.PortMapping.1."}))
	_, n = c.nextNotify()
	if n.GetSubscriptionId() != "od" || n.GetObjDeletion().GetObjPath() != "Device.NAT.PortMapping.1." {
		t.Fatalf("deletion: %v", n)
	}
}

func TestAsyncIPPing(t *testing.T) {
	c := newAgent(t, "SN6")
	c.subscribe("opc", "OperationComplete", "Device.", false, false)
	r := c.do(usp.NewOperate(c.id(), "Device.IP.Diagnostics.IPPing()", "ping-1", true, map[string]string{
		"ProtocolVersion": "Any", "Host": "example.org", "NumberOfRepetitions": "3", "Timeout": "1000", "DataBlockSize": "64",
	}))
	or := r.Msg.GetBody().GetResponse().GetOperateResp().GetOperationResults()[0]
	if or.GetReqObjPath() != "Device.LocalAgent.Request.1." || or.GetExecutedCommand() != "Device.IP.Diagnostics.IPPing()" {
		t.Fatalf("operate: %v", or)
	}
	_, n := c.nextNotify()
	oc := n.GetOperComplete()
	if oc.GetObjPath() != "Device.IP.Diagnostics." || oc.GetCommandName() != "IPPing()" || oc.GetCommandKey() != "ping-1" ||
		oc.GetReqOutputArgs().GetOutputArgs()["SuccessCount"] != "3" {
		t.Fatalf("oper complete: %v", n)
	}
	if _, ok := c.a.Parameter("Device.LocalAgent.Request.1.Status"); ok {
		t.Fatal("Request row not removed")
	}
	// A missing mandatory argument: cmd_failure 7027, even with send_resp=false.
	r = c.do(usp.NewOperate(c.id(), "Device.IP.Diagnostics.IPPing()", "", false, map[string]string{"Host": "x"}))
	if f := r.Msg.GetBody().GetResponse().GetOperateResp().GetOperationResults()[0].GetCmdFailure(); f.GetErrCode() != 7027 {
		t.Fatalf("missing args: %v", r.Msg)
	}
	r = c.do(usp.NewOperate(c.id(), "Device.Nope()", "", true, nil))
	if e := r.Msg.GetBody().GetError(); e.GetErrCode() != 7026 {
		t.Fatalf("unknown command: %v", r.Msg)
	}
}

func TestRebootBootEvent(t *testing.T) {
	c := newAgent(t, "SN7")
	c.subscribe("boot", "Event", "Device.Boot!", true, true)
	c.subscribe("temp", "ValueChange", "Device.WiFi.", false, false)
	c.do(usp.NewAdd(c.id(), false, []usp.ObjectSettings{{Path: "Device.LocalAgent.Controller.1.BootParameter.", Params: []usp.ParamSetting{
		{Param: "Enable", Value: "true"}, {Param: "ParameterName", Value: "Device.DeviceInfo.SoftwareVersion"},
	}}}))
	r := c.do(usp.NewOperate(c.id(), "Device.Reboot()", "reboot-42", true, nil))
	if or := r.Msg.GetBody().GetResponse().GetOperateResp().GetOperationResults()[0]; or.GetReqOutputArgs() == nil {
		t.Fatalf("reboot is sync: %v", or)
	}
	if o := c.next(); !o.Restart {
		t.Fatal("first outgoing after reboot is not a restart")
	}
	br, n := c.nextNotify()
	ev := n.GetEvent()
	if n.GetSubscriptionId() != "boot" || !n.GetSendResp() || ev.GetObjPath() != "Device." || ev.GetEventName() != "Boot!" ||
		ev.GetParams()["CommandKey"] != "reboot-42" || ev.GetParams()["Cause"] != "RemoteReboot" ||
		ev.GetParams()["ParameterMap"] != `{"Device.DeviceInfo.SoftwareVersion":"1.0.0"}` {
		t.Fatalf("boot: %v", n)
	}
	b, _ := usp.MarshalMsgRecord(ctrlID, c.a.EndpointID(), usp.NewNotifyResp(br.MsgID, "boot"))
	c.a.HandleRecord(b)
	if c.a.PendingNotifies() != 0 {
		t.Fatal("Boot! still pending after NotifyResp")
	}
	// Retries queued before the NotifyResp are the same Boot!, nothing else.
	for len(c.a.Outgoing()) > 0 {
		if r, _ := c.nextNotify(); r.MsgID != br.MsgID {
			t.Fatalf("unexpected %s", r.MsgID)
		}
	}
	// The non-persistent subscription is gone, the persistent one stays.
	r = c.do(usp.NewGet(c.id(), []string{"Device.LocalAgent.Subscription.*.ID"}, 0))
	if got := r.Msg.GetBody().GetResponse().GetGetResp().GetReqPathResults()[0].GetResolvedPathResults(); len(got) != 1 || got[0].GetResultParams()["ID"] != "boot" {
		t.Fatalf("subscriptions after reboot: %v", got)
	}
	// A local reboot afterwards: the CommandKey is not reused.
	c.a.Reboot()
	if o := c.next(); !o.Restart {
		t.Fatal("no restart")
	}
	_, n = c.nextNotify()
	if n.GetEvent().GetParams()["CommandKey"] != "" || n.GetEvent().GetParams()["Cause"] != "LocalReboot" {
		t.Fatalf("local boot: %v", n)
	}
	if c.a.Boots() != 2 {
		t.Fatalf("boots %d", c.a.Boots())
	}
}

func TestFactoryReset(t *testing.T) {
	c := newAgent(t, "SN8")
	c.subscribe("boot", "Event", "Device.", true, false)
	c.do(usp.NewSet(c.id(), false, []usp.ObjectSettings{{Path: "Device.WiFi.SSID.1.", Params: []usp.ParamSetting{{Param: "SSID", Value: "mine"}}}}))
	// send_resp=false: no OperateResp at all.
	b, _ := usp.MarshalMsgRecord(ctrlID, c.a.EndpointID(), usp.NewOperate(c.id(), "Device.FactoryReset()", "fr-1", false, nil))
	if replies := c.a.HandleRecord(b); len(replies) != 0 {
		t.Fatalf("%d replies to send_resp=false", len(replies))
	}
	if o := c.next(); !o.Restart {
		t.Fatal("no restart")
	}
	c.noOutgoing() // the Boot! subscription went with the reset
	if v, _ := c.a.Parameter("Device.WiFi.SSID.1.SSID"); v != "sim-2g" {
		t.Fatalf("SSID after reset %q", v)
	}
	// The provisioned Controller survives (factory default), so it still answers.
	r := c.do(usp.NewGet(c.id(), []string{"Device.LocalAgent.Subscription."}, 0))
	if got := r.Msg.GetBody().GetResponse().GetGetResp().GetReqPathResults()[0]; len(got.GetResolvedPathResults()) != 0 {
		t.Fatalf("subscriptions after reset: %v", got)
	}
}

func TestIgnoresStrangersAndAnswersFaults(t *testing.T) {
	c := newAgent(t, "SN9")
	b, _ := usp.MarshalMsgRecord("self::stranger", c.a.EndpointID(), usp.NewGet("x", []string{"Device."}, 0))
	if len(c.a.HandleRecord(b)) != 0 || c.a.Ignored() != 1 {
		t.Fatal("answered a stranger")
	}
	b, _ = usp.MarshalMsgRecord(ctrlID, "os::someone-else", usp.NewGet("x", []string{"Device."}, 0))
	if len(c.a.HandleRecord(b)) != 0 || c.a.Ignored() != 2 {
		t.Fatal("answered a record for someone else")
	}
	// A Request with an empty req_type: R-MTP.5 allows an Error.
	m := &uspmsg.Msg{Header: &uspmsg.Header{MsgId: "bad-1", MsgType: uspmsg.Header_GET}, Body: &uspmsg.Body{MsgBody: &uspmsg.Body_Request{Request: &uspmsg.Request{}}}}
	b, _ = usp.MarshalMsgRecord(ctrlID, c.a.EndpointID(), m)
	replies := c.a.HandleRecord(b)
	if len(replies) != 1 {
		t.Fatal("no Error for a malformed request")
	}
	r, err := usp.ParseRecord(replies[0], ctrlID)
	if err != nil || r.MsgID != "bad-1" || r.Msg.GetBody().GetError().GetErrCode() != 7004 {
		t.Fatalf("error reply: %v %v", r, err)
	}
	// Notify sent to an Agent: not supported.
	r = c.do(usp.NewRequest("n", &uspmsg.Request{ReqType: &uspmsg.Request_Notify{Notify: &uspmsg.Notify{}}}))
	if r.Msg.GetBody().GetError().GetErrCode() != 7001 {
		t.Fatalf("notify to agent: %v", r.Msg)
	}
}

func TestSupportedDMAndProtocol(t *testing.T) {
	c := newAgent(t, "SN10")
	r := c.do(usp.NewGetSupportedProtocol(c.id(), usp.ControllerSupportedVersions))
	if v := r.Msg.GetBody().GetResponse().GetGetSupportedProtocolResp().GetAgentSupportedProtocolVersions(); v != "1.0,1.1,1.2,1.3" {
		t.Fatalf("versions %q", v)
	}
	r = c.do(usp.NewGetSupportedDM(c.id(), []string{"Device.NAT.PortMapping.", "Device.IP.Diagnostics.", "Device.Nope."},
		usp.GSDMOptions{ReturnParams: true, ReturnCommands: true, ReturnEvents: true, ReturnUniqueKeySets: true}))
	res := r.Msg.GetBody().GetResponse().GetGetSupportedDmResp().GetReqObjResults()
	pm := res[0].GetSupportedObjs()[0]
	if pm.GetSupportedObjPath() != "Device.NAT.PortMapping.{i}." || !pm.GetIsMultiInstance() || pm.GetAccess() != uspmsg.GetSupportedDMResp_OBJ_ADD_DELETE ||
		len(pm.GetSupportedParams()) == 0 || len(pm.GetUniqueKeySets()) != 2 {
		t.Fatalf("portmapping: %v", pm)
	}
	if cmd := res[1].GetSupportedObjs()[0].GetSupportedCommands(); len(cmd) != 5 || cmd[0].GetCommandName() != "IPPing()" || cmd[0].GetCommandType() != uspmsg.GetSupportedDMResp_CMD_ASYNC {
		t.Fatalf("ipping: %v", cmd)
	}
	if res[2].GetErrCode() != 7026 {
		t.Fatalf("unknown: %v", res[2])
	}
}

func TestCloseTwiceNoLeak(t *testing.T) {
	base := runtime.NumGoroutine()
	c := newAgent(t, "SN11")
	c.subscribe("vc", "ValueChange", "Device.WiFi.", false, true)
	c.a.SetParameter("Device.WiFi.SSID.1.SSID", "z")
	c.a.Close()
	if err := c.a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-c.a.Outgoing(); ok {
		// Items queued before Close may remain; drain to the close.
		for range c.a.Outgoing() {
		}
	}
	if c.a.HandleRecord([]byte{1}) != nil {
		t.Fatal("closed agent answered")
	}
	checkFor(t, 2*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > base {
			return errors.New("goroutines left: " + itoa(n-base))
		}
		return nil
	})
}

// Search expressions (TR-369 "Instance identifiers"–7.3): typed comparison, && only,
// quoted strings, unique-key addressing.
func TestSearchExpressions(t *testing.T) {
	c := newAgent(t, "SN12")
	for _, port := range []string{"22", "8080", "9090"} {
		c.do(usp.NewAdd(c.id(), false, []usp.ObjectSettings{{Path: "Device.NAT.PortMapping.", Params: []usp.ParamSetting{
			{Param: "ExternalPort", Value: port}, {Param: "Enable", Value: usp.FormatBool(port != "22")}, {Param: "Description", Value: "p." + port},
		}}}))
	}
	get := func(path string) (uint32, []string) {
		r := c.do(usp.NewGet(c.id(), []string{path}, 0))
		res := r.Msg.GetBody().GetResponse().GetGetResp().GetReqPathResults()[0]
		var got []string
		for _, rp := range res.GetResolvedPathResults() {
			got = append(got, rp.GetResolvedPath())
		}
		return res.GetErrCode(), got
	}
	for path, want := range map[string]string{
		`Device.WiFi.SSID.[Name=="ssid1"].SSID`:                               "Device.WiFi.SSID.2.",
		`Device.NAT.PortMapping.[ExternalPort>1000].Enable`:                   "Device.NAT.PortMapping.2.,Device.NAT.PortMapping.3.",
		`Device.NAT.PortMapping.[ExternalPort>=+0080&&Enable==1].Enable`:      "Device.NAT.PortMapping.2.,Device.NAT.PortMapping.3.",
		`Device.NAT.PortMapping.[Enable==false].`:                             "Device.NAT.PortMapping.1.",
		`Device.NAT.PortMapping.[Description=="p.9090"].ExternalPort`:         "Device.NAT.PortMapping.3.",
		`Device.NAT.PortMapping.[Description!="p.9090"&&Enable==true].Enable`: "Device.NAT.PortMapping.2.",
		`Device.NAT.PortMapping.[Description>"a"].Enable`:                     "", // strings allow only == and !=
		`Device.NAT.PortMapping.[ExternalPort==7].Enable`:                     "",
	} {
		code, got := get(path)
		if code != 0 || strings.Join(got, ",") != want {
			t.Errorf("%s: code %d got %v, want %s", path, code, got, want)
		}
	}
	r := c.do(usp.NewDelete(c.id(), false, []string{"Device.NAT.PortMapping.[ExternalPort<9000]."}))
	if got := r.Msg.GetBody().GetResponse().GetDeleteResp().GetDeletedObjResults()[0].GetOperStatus().GetOperSuccess().GetAffectedPaths(); len(got) != 2 {
		t.Fatalf("delete by expression: %v", r.Msg)
	}
	// A subscription whose ReferenceList uses a search expression.
	c.subscribe("ssid", "ValueChange", `Device.WiFi.SSID.[Name=="ssid0"].`, false, false)
	c.a.SetParameter("Device.WiFi.SSID.2.SSID", "other") // ssid1: no match
	c.noOutgoing()
	c.a.SetParameter("Device.WiFi.SSID.1.SSID", "mine")
	if _, n := c.nextNotify(); n.GetValueChange().GetParamPath() != "Device.WiFi.SSID.1.SSID" {
		t.Fatalf("notify: %v", n)
	}
}

func TestPeriodicEvent(t *testing.T) {
	a, err := agent.New(agent.Config{SerialNumber: "SN13", ControllerID: ctrlID, PeriodicInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	c := &ctl{t: t, a: a}
	c.subscribe("periodic", "Event", "Device.LocalAgent.Periodic!", false, false)
	for i := 0; i < 2; i++ {
		_, n := c.nextNotify()
		if ev := n.GetEvent(); n.GetSubscriptionId() != "periodic" || ev.GetObjPath() != "Device.LocalAgent." || ev.GetEventName() != "Periodic!" {
			t.Fatalf("periodic: %v", n)
		}
	}
}

// TestCreateInstanceBehindTheControllersBack: a row the device creates
// itself is in the data model, with agent-assigned keys, and reads like
// any other; a bad table or parameter is refused.
func TestCreateInstanceBehindTheControllersBack(t *testing.T) {
	c := newAgent(t, "SN9")
	inst, err := c.a.CreateInstance("Device.NAT.PortMapping.", map[string]string{"Description": "eval-prof2", "ExternalPort": "7000"})
	if err != nil || inst != "Device.NAT.PortMapping.1." {
		t.Fatalf("create: %q %v", inst, err)
	}
	for p, want := range map[string]string{"Description": "eval-prof2", "ExternalPort": "7000", "Alias": "cpe-1", "Enable": "false"} {
		if got, ok := c.a.Parameter(inst + p); !ok || got != want {
			t.Fatalf("%s%s = %q %v, want %q", inst, p, got, ok, want)
		}
	}
	r := c.do(usp.NewGetInstances(c.id(), []string{"Device.NAT.PortMapping."}, true))
	if gi := r.Msg.GetBody().GetResponse().GetGetInstancesResp().GetReqPathResults(); len(gi[0].GetCurrInsts()) != 1 {
		t.Fatalf("get instances: %v", gi)
	}
	if _, err := c.a.CreateInstance("Device.DeviceInfo.", nil); err == nil {
		t.Fatal("created a row of a single object")
	}
	if _, err := c.a.CreateInstance("Device.NAT.PortMapping.", map[string]string{"Bogus": "1"}); err == nil {
		t.Fatal("created a row with an unknown parameter")
	}
}
