package cwmp

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

func cmdGet(paths ...string) *duetv1.Command {
	return &duetv1.Command{Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: paths}}}
}

func resultOf(t *testing.T, reqs []*duetv1.SessionWorkRequest, id string) *duetv1.CommandResult {
	t.Helper()
	for _, r := range reqs {
		for _, res := range r.Results {
			if res.CommandId == id {
				return res
			}
		}
	}
	t.Fatalf("no result for %s", id)
	return nil
}

// TestFullSessionBothRoots runs every translated operation end to end for
// a TR-181 and a TR-098 CPE.
func TestFullSessionBothRoots(t *testing.T) {
	for _, root := range []string{"Device.", "InternetGatewayDevice."} {
		t.Run(strings.TrimSuffix(root, "."), func(t *testing.T) {
			e := newEnv(t, nil)
			cpe := newCPE(t, e.url, root, "SN1", true, false)
			cpe.dm.params[root+"X.ReadOnly"] = cwmp.Value{Type: cwmp.TypeString, Data: "r"}
			e.queue(
				&duetv1.Command{Id: "get", Op: &duetv1.Command_Get{Get: &duetv1.GetRequest{Paths: []string{root + "X.Table.", root + "DeviceInfo.ModelName", root + "Nope."}}}},
				&duetv1.Command{Id: "set", Op: &duetv1.Command_Set{Set: &duetv1.SetRequest{ParameterKey: "pk1", Params: []*duetv1.Parameter{
					{Path: root + "ManagementServer.PeriodicInformInterval", Value: "600", Type: duetv1.ParamType_PARAM_TYPE_UNSIGNED_INT}}}}},
				&duetv1.Command{Id: "setbad", Op: &duetv1.Command_Set{Set: &duetv1.SetRequest{Params: []*duetv1.Parameter{
					{Path: root + "X.ReadOnly", Value: "w"}}}}},
				&duetv1.Command{Id: "add", Op: &duetv1.Command_Add{Add: &duetv1.AddRequest{ObjectPath: root + "X.Table.", Params: []*duetv1.Parameter{{Path: "Name", Value: "three"}}}}},
				&duetv1.Command{Id: "del", Op: &duetv1.Command_Delete{Delete: &duetv1.DeleteRequest{ObjectPaths: []string{root + "X.Table.1."}}}},
			)
			e.queue(
				&duetv1.Command{Id: "inst", Op: &duetv1.Command_GetInstances{GetInstances: &duetv1.GetInstancesRequest{Paths: []string{root + "X.Table."}}}},
				&duetv1.Command{Id: "sdm", Op: &duetv1.Command_GetSupportedDm{GetSupportedDm: &duetv1.GetSupportedDMRequest{Paths: []string{root + "X."}}}},
				&duetv1.Command{Id: "sattr", Op: &duetv1.Command_SetAttributes{SetAttributes: &duetv1.SetAttributesRequest{Attributes: []*duetv1.ParameterAttribute{
					{Path: root + "DeviceInfo.SoftwareVersion", NotificationChange: true, Notification: duetv1.Notification_NOTIFICATION_ACTIVE}}}}},
				&duetv1.Command{Id: "gattr", Op: &duetv1.Command_GetAttributes{GetAttributes: &duetv1.GetAttributesRequest{Paths: []string{root + "DeviceInfo.SoftwareVersion"}}}},
				&duetv1.Command{Id: "rpc", Op: &duetv1.Command_CwmpRpc{CwmpRpc: &duetv1.CwmpRpc{Method: "GetRPCMethods"}}},
				&duetv1.Command{Id: "sched", Op: &duetv1.Command_CwmpRpc{CwmpRpc: &duetv1.CwmpRpc{Method: "ScheduleInform", Args: map[string]string{"DelaySeconds": "5", "CommandKey": "k"}}}},
				&duetv1.Command{Id: "rpcbad", Op: &duetv1.Command_CwmpRpc{CwmpRpc: &duetv1.CwmpRpc{Method: "ScheduleInform", Args: map[string]string{"Delay": "5"}}}},
				&duetv1.Command{Id: "reboot", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: root + "Reboot()", CommandKey: "rb1"}}},
			)
			cpe.session(cpe.inform(cwmp.EventPeriodic))

			reqs := e.workRequests()
			if len(reqs) != 3 || reqs[0].Round != 0 || reqs[1].Round != 1 || reqs[2].Round != 2 {
				t.Fatalf("work requests: %d %v", len(reqs), reqs)
			}
			if reqs[0].DeviceId != cpe.id() || reqs[0].SessionId == "" || len(reqs[0].Results) != 0 {
				t.Fatalf("first work request %v", reqs[0])
			}

			// Get: partial path expanded with GPN then GPV; a bad partial path is a per-path error.
			get := resultOf(t, reqs, "get")
			var got []string
			for _, p := range get.GetGet().Params {
				got = append(got, p.Path+"="+p.Value)
			}
			want := []string{root + "DeviceInfo.ModelName=Model", root + "X.Table.1.Name=one", root + "X.Table.2.Name=two"}
			slices.Sort(got)
			if !slices.Equal(got, want) || get.Error != nil {
				t.Errorf("get = %v err %v, want %v", got, get.Error, want)
			}
			if errs := get.GetGet().Errors; len(errs) != 1 || errs[0].Path != root+"Nope." || errs[0].DeviceFault != 9005 {
				t.Errorf("get errors = %v", errs)
			}
			if i := slices.Index(cpe.handled, "GetParameterNames"); i < 0 || slices.Index(cpe.handled, "GetParameterValues") < i {
				t.Errorf("RPC order %v: want GPN before GPV", cpe.handled)
			}
			// Set with xsi type and ParameterKey.
			if r := resultOf(t, reqs, "set"); r.Error != nil || len(r.GetSet().Updated) != 1 {
				t.Errorf("set = %v", r)
			}
			if v := cpe.dm.params[root+"ManagementServer.PeriodicInformInterval"]; v.Type != cwmp.TypeUnsignedInt || v.Data != "600" {
				t.Errorf("SPV wrote %+v", v)
			}
			if spv, ok := cpe.dm.log[slices.Index(cpe.handled, "SetParameterValues")].(*cwmp.SetParameterValues); !ok || spv.ParameterKey != "pk1" {
				t.Errorf("first SPV %+v, want ParameterKey pk1", spv)
			}
			// SetParameterValuesFault entries become ParamErrors.
			if r := resultOf(t, reqs, "setbad"); r.Error == nil || r.Error.DeviceFault != 9003 ||
				len(r.Error.Params) != 1 || r.Error.Params[0].DeviceFault != 9008 || r.Error.Params[0].Code != duetv1.ErrorCode_ERROR_CODE_NOT_WRITABLE {
				t.Errorf("setbad = %v", r)
			}
			// Add then SPV on the new instance.
			if r := resultOf(t, reqs, "add"); r.Error != nil || r.GetAdd().InstancePath != root+"X.Table.3." {
				t.Errorf("add = %v", r)
			}
			if v := cpe.dm.get(root + "X.Table.3.Name"); v != "three" {
				t.Errorf("new instance Name = %q", v)
			}
			if r := resultOf(t, reqs, "del"); r.Error != nil || !slices.Equal(r.GetDelete().DeletedPaths, []string{root + "X.Table.1."}) {
				t.Errorf("delete = %v", r)
			}
			if r := resultOf(t, reqs, "inst"); len(r.GetGetInstances().Instances) != 2 {
				t.Errorf("instances = %v", r)
			}
			if r := resultOf(t, reqs, "sdm"); r.Error != nil || len(r.GetGetSupportedDm().Objects) == 0 {
				t.Errorf("supported dm = %v", r)
			}
			if r := resultOf(t, reqs, "sattr"); r.Error != nil {
				t.Errorf("set attributes = %v", r)
			}
			if r := resultOf(t, reqs, "gattr"); len(r.GetGetAttributes().Attributes) != 1 || r.GetGetAttributes().Attributes[0].Notification != duetv1.Notification_NOTIFICATION_ACTIVE {
				t.Errorf("get attributes = %v", r)
			}
			if r := resultOf(t, reqs, "rpc"); r.GetCwmpRpc().Values["MethodList.2"] != "Reboot" {
				t.Errorf("cwmp_rpc = %v", r)
			}
			if r := resultOf(t, reqs, "sched"); r.Error != nil {
				t.Errorf("ScheduleInform = %v", r)
			}
			if r := resultOf(t, reqs, "rpcbad"); r.Error.GetCode() != duetv1.ErrorCode_ERROR_CODE_INVALID_ARGUMENT {
				t.Errorf("bad cwmp_rpc args = %v", r)
			}
			// Neutral form: CWMP's Reboot is not a data-model command (issue 11).
			if r := resultOf(t, reqs, "reboot"); r.Error != nil || r.GetReboot().GetCommandKey() != "rb1" || r.GetOperate() != nil {
				t.Errorf("reboot = %v", r)
			}
			var reboot *cwmp.Reboot
			for _, m := range cpe.dm.log {
				if rb, ok := m.(*cwmp.Reboot); ok {
					reboot = rb
				}
			}
			if reboot == nil || reboot.CommandKey != "rb1" {
				t.Errorf("Reboot sent as %+v", reboot)
			}
			// Every result is durable as a command_result event.
			ev := e.waitEvent("command_result", cpe.id(), func(ev *duetv1.Event) bool { return ev.GetCommandResult().CommandId == "add" })
			if ev.GetDevice().GetDataModel() != root || ev.GetReachability().GetTransport() != "cwmp" {
				t.Errorf("event identity %v reach %v", ev.Device, ev.Reachability)
			}
			// Inform and periodic events with identity facts.
			inf := e.waitEvent("inform", cpe.id(), nil)
			if inf.GetInform().CwmpNamespace != cwmp.NamespaceCWMP12 || inf.Device.SoftwareVersion != "1.0" ||
				inf.Device.ProvisioningCode != "PC1" || inf.Reachability.ConnectionRequestUrl != "http://192.0.2.1:7547/cr" ||
				inf.Device.Oui != "00D09E" || inf.Device.Manufacturer != "Acme" {
				t.Errorf("inform event %v", inf)
			}
			e.waitEvent("periodic", cpe.id(), nil)
		})
	}
}

func TestInformEvents(t *testing.T) {
	e := newEnv(t, nil)
	cpe := newCPE(t, e.url, "Device.", "EV1", true, false)
	inf := cpe.inform(cwmp.EventBootstrap, cwmp.EventBoot, cwmp.EventMReboot+"|rb9", cwmp.EventValueChange)
	inf.ParameterList = append(inf.ParameterList, cwmp.ParameterValueStruct{Name: "Device.WiFi.SSID.1.SSID", Value: cwmp.Value{Type: cwmp.TypeString, Data: "net"}})
	cpe.session(inf)
	e.waitEvent("bootstrap", cpe.id(), nil)
	if b := e.waitEvent("boot", cpe.id(), nil); b.GetBoot().CommandKey != "rb9" {
		t.Errorf("boot command key %q", b.GetBoot().CommandKey)
	}
	vc := e.waitEvent("value_change", cpe.id(), nil)
	if ps := vc.GetValueChange().Params; len(ps) != 1 || ps[0].Path != "Device.WiFi.SSID.1.SSID" || ps[0].Value != "net" {
		t.Errorf("value change params %v (forced-inform params must be left out)", ps)
	}
	if n := e.countEvents("periodic", cpe.id()); n != 0 {
		t.Errorf("%d periodic events for a non-periodic inform", n)
	}
}

func TestDownloadAndTransferComplete(t *testing.T) {
	e := newEnv(t, nil)
	cpe := newCPE(t, e.url, "Device.", "DL1", true, false)
	e.queue(&duetv1.Command{Id: "dl", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{
		Command: "Device.DeviceInfo.FirmwareImage.1.Download()", CommandKey: "fw1",
		InputArgs: map[string]string{"URL": "http://files/fw.bin", "FileSize": "1234", "Username": "u", "Password": "p"}}}})
	cpe.session(cpe.inform(cwmp.EventPeriodic))
	r := resultOf(t, e.workRequests(), "dl")
	if r.Error != nil || r.GetTransfer().GetStatus() != 1 || r.GetTransfer().GetCommandKey() != "fw1" || r.GetOperate() != nil {
		t.Fatalf("download result %v", r)
	}
	d, ok := cpe.dm.log[0].(*cwmp.Download)
	if !ok || d.FileType != cwmp.FileTypeFirmware || d.URL != "http://files/fw.bin" || d.FileSize != 1234 || d.CommandKey != "fw1" || d.Password != "p" {
		t.Fatalf("Download sent as %+v", cpe.dm.log[0])
	}
	// Next session: 7 TRANSFER COMPLETE + M Download, then the TransferComplete RPC (failed).
	tc := &cwmp.TransferComplete{CommandKey: "fw1", FaultStruct: cwmp.FaultStruct{FaultCode: 9010, FaultString: "bad image"},
		StartTime: cwmp.UnknownTime, CompleteTime: cwmp.UnknownTime}
	cpe.session(cpe.inform(cwmp.EventTransferComplete, cwmp.EventMDownload+"|fw1"), tc)
	ev := e.waitEvent("transfer_complete", cpe.id(), nil).GetTransferComplete()
	if ev.CommandKey != "fw1" || ev.Error.GetCode() != duetv1.ErrorCode_ERROR_CODE_TRANSFER_FAILED || ev.Error.GetDeviceFault() != 9010 || ev.Autonomous {
		t.Errorf("transfer_complete %v", ev)
	}
	// Autonomous.
	atc := &cwmp.AutonomousTransferComplete{TransferURL: "http://x/y", IsDownload: true, FileType: cwmp.FileTypeFirmware,
		StartTime: cwmp.UnknownTime, CompleteTime: cwmp.UnknownTime}
	cpe.session(cpe.inform(cwmp.EventAutonomousTransferComplete), atc)
	e.waitEvent("transfer_complete", cpe.id(), func(ev *duetv1.Event) bool {
		tc := ev.GetTransferComplete()
		return tc.Autonomous && tc.Error == nil && tc.Url == "http://x/y" && tc.IsDownload
	})
}

func TestDiagnostics(t *testing.T) {
	for _, tc := range []struct{ root, cmd, obj string }{
		{"Device.", "Device.IP.Diagnostics.IPPing()", "Device.IP.Diagnostics.IPPing."},
		{"InternetGatewayDevice.", "InternetGatewayDevice.IPPingDiagnostics()", "InternetGatewayDevice.IPPingDiagnostics."},
	} {
		t.Run(tc.root, func(t *testing.T) {
			e := newEnv(t, nil)
			cpe := newCPE(t, e.url, tc.root, "DG1", true, false)
			e.queue(&duetv1.Command{Id: "ping", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{
				Command: tc.cmd, InputArgs: map[string]string{"Host": "192.0.2.9", "NumberOfRepetitions": "3"}}}})
			cpe.session(cpe.inform(cwmp.EventPeriodic))
			r := resultOf(t, e.workRequests(), "ping")
			if r.Error != nil || !r.GetOperate().Async || r.GetOperate().RequestPath != tc.obj {
				t.Fatalf("ping result %v", r)
			}
			spv, ok := cpe.dm.log[0].(*cwmp.SetParameterValues)
			if !ok || len(cpe.dm.log) != 1 {
				t.Fatalf("want one SPV, got %v", cpe.dm.log)
			}
			vals := map[string]cwmp.Value{}
			for _, p := range spv.ParameterList {
				vals[p.Name] = p.Value
			}
			if vals[tc.obj+"DiagnosticsState"].Data != "Requested" || vals[tc.obj+"Host"].Data != "192.0.2.9" ||
				vals[tc.obj+"NumberOfRepetitions"].Type != cwmp.TypeUnsignedInt {
				t.Fatalf("SPV %v", vals)
			}
			// The CPE ran the test: results are read in the next session.
			cpe.dm.params[tc.obj+"DiagnosticsState"] = cwmp.Value{Type: cwmp.TypeString, Data: "Complete"}
			cpe.dm.params[tc.obj+"SuccessCount"] = cwmp.Value{Type: cwmp.TypeUnsignedInt, Data: "3"}
			cpe.dm.log = nil
			cpe.session(cpe.inform(cwmp.EventDiagnosticsComplete))
			ev := e.waitEvent("diagnostics_complete", cpe.id(), nil).GetDiagnosticsComplete()
			got := map[string]string{}
			for _, p := range ev.Params {
				got[p.Path] = p.Value
			}
			if got[tc.obj+"SuccessCount"] != "3" || got[tc.obj+"DiagnosticsState"] != "Complete" {
				t.Errorf("diagnostics params %v", got)
			}
		})
	}
}

func TestCookieAndConnectionKeying(t *testing.T) {
	e := newEnv(t, nil)
	e.queue(cmdGet("Device.DeviceInfo.ModelName"))
	// Cookie-less CPE on one keep-alive connection (docs/cwmp-interop.md #9).
	c1 := newCPE(t, e.url, "Device.", "K1", true, false)
	c1.session(c1.inform(cwmp.EventPeriodic))
	if len(c1.handled) != 1 {
		t.Fatalf("cookie-less session ran %v", c1.handled)
	}
	// A CPE opening a new connection per POST, carrying the cookie (docs/cwmp-interop.md #10).
	e.queue(cmdGet("Device.DeviceInfo.ModelName"))
	c2 := newCPE(t, e.url, "Device.", "K2", false, true)
	c2.session(c2.inform(cwmp.EventPeriodic))
	if len(c2.handled) != 1 {
		t.Fatalf("cookie session ran %v", c2.handled)
	}
	// New connection without a cookie: no session -> 400 + Connection: close.
	c3 := newCPE(t, e.url, "Device.", "K3", false, false)
	resp, _ := c3.post(c3.inform(cwmp.EventPeriodic))
	if resp.StatusCode != http.StatusOK {
		t.Fatal(resp.Status)
	}
	resp, _ = c3.post(nil)
	if resp.StatusCode != http.StatusBadRequest || !resp.Close {
		t.Fatalf("empty POST without session: %d close=%v", resp.StatusCode, resp.Close)
	}
	// Lenient cookie: comma separated and quoted.
	c4 := newCPE(t, e.url, "Device.", "K4", false, false)
	resp, _ = c4.post(c4.inform())
	var id string
	for _, ck := range resp.Cookies() {
		if ck.Name == "session" {
			id = ck.Value
		}
	}
	c4.header.Set("Cookie", `foo=bar, session="`+id+`"`)
	if resp, _ = c4.post(nil); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("quoted cookie: %d", resp.StatusCode)
	}
}

func TestUnknownMethodAndCPERequests(t *testing.T) {
	e := newEnv(t, nil)
	c := newCPE(t, e.url, "Device.", "U1", true, false)
	c.post(c.inform(cwmp.EventPeriodic))
	resp, envl := c.postRaw([]byte(`<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cwmp="urn:dslforum-org:cwmp-1-2"><soap:Body><cwmp:X_Vendor_Thing/></soap:Body></soap:Envelope>`))
	f, ok := envl.Body.(*cwmp.Fault)
	if resp.StatusCode != http.StatusOK || !ok || f.Detail.FaultCode != 8000 {
		t.Fatalf("unknown method: %d %#v", resp.StatusCode, envl)
	}
	_, envl = c.post(&cwmp.GetRPCMethods{})
	if ml := envl.Body.(*cwmp.GetRPCMethodsResponse).MethodList; !slices.Contains(ml, "TransferComplete") {
		t.Errorf("methods %v", ml)
	}
	_, envl = c.post(&cwmp.Kicked{Command: "x", Next: "http://next"})
	if envl.Body.(*cwmp.KickedResponse).NextURL != "http://next" {
		t.Errorf("kicked %v", envl.Body)
	}
	// Second Inform on the same connection is bad state.
	if resp, _ = c.post(c.inform()); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("second inform: %d", resp.StatusCode)
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.MaxBodyBytes = 64 << 10 })
	e.queue(cmdGet("Device.DeviceInfo.ModelName"))
	// A good session is open while the bad requests arrive.
	good := newCPE(t, e.url, "Device.", "G1", true, false)
	if resp, _ := good.post(good.inform(cwmp.EventPeriodic)); resp.StatusCode != http.StatusOK {
		t.Fatal(resp.Status)
	}

	bad := newCPE(t, e.url, "Device.", "B1", false, false)
	check := func(name string, want int, body []byte, hdr map[string]string) {
		t.Helper()
		bad.header = http.Header{}
		for k, v := range hdr {
			bad.header.Set(k, v)
		}
		resp, _ := bad.postRaw(body)
		if resp.StatusCode != want {
			t.Errorf("%s: status %d, want %d", name, resp.StatusCode, want)
		}
	}
	check("bad xml", 400, []byte("<soap:Envelope><unclosed>"), nil)
	check("doctype bomb", 400, []byte(`<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>&lol2;</soap:Body></soap:Envelope>`), nil)
	check("oversized", 413, []byte("<a>"+strings.Repeat("x", 70<<10)+"</a>"), nil)
	check("encoding", 415, []byte("<a/>"), map[string]string{"Content-Encoding": "br"})
	check("wrong state", 400, nil, nil)

	req, _ := http.NewRequest(http.MethodGet, e.url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
		t.Errorf("GET: %d Allow=%q", resp.StatusCode, resp.Header.Get("Allow"))
	}

	// The good session is unaffected and completes.
	resp, envl := good.post(nil)
	if resp.StatusCode != http.StatusOK || envl.Body.MethodName() != "GetParameterValues" {
		t.Fatalf("good session: %d", resp.StatusCode)
	}
	if resp, _ = good.post(good.dm.answer(envl.Body)); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("good session end: %d", resp.StatusCode)
	}
}

func TestGzipSession(t *testing.T) {
	e := newEnv(t, nil)
	e.queue(cmdGet("Device.DeviceInfo.ModelName"))
	c := newCPE(t, e.url, "Device.", "Z1", true, false)
	c.enc = "gzip"
	// The transport does not ask for compression, so a gzip reply is the
	// ACS answering in the request's encoding (docs/cwmp-interop.md #8).
	resp, envl := c.post(c.inform(cwmp.EventPeriodic))
	if resp.StatusCode != 200 || c.lastEnc != "gzip" || envl.Body.MethodName() != "InformResponse" {
		t.Fatalf("gzip inform: %d enc %q", resp.StatusCode, c.lastEnc)
	}
	resp, envl = c.post(nil)
	if resp.StatusCode != 200 || c.lastEnc != "gzip" {
		t.Fatalf("gzip empty POST: %d enc %q", resp.StatusCode, c.lastEnc)
	}
	c.handled = append(c.handled, envl.Body.MethodName())
	if resp, _ = c.post(c.dm.answer(envl.Body)); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("end: %d", resp.StatusCode)
	}
	if len(c.handled) != 1 {
		t.Fatalf("handled %v", c.handled)
	}
}

func TestFaultMapping(t *testing.T) {
	e := newEnv(t, nil)
	c := newCPE(t, e.url, "Device.", "F1", true, false)
	c.dm.faults["Reboot"] = cwmp.NewFault(cwmp.FaultRequestDenied, "")
	c.dm.faults["Download"] = cwmp.NewFault(cwmp.FaultFileServerUnreachable, "")
	e.queue(
		&duetv1.Command{Id: "rb", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.Reboot()"}}},
		&duetv1.Command{Id: "dl", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.DeviceInfo.FirmwareImage.1.Download()", InputArgs: map[string]string{"URL": "http://x"}}}},
		&duetv1.Command{Id: "fr", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.FactoryReset()"}}},
		&duetv1.Command{Id: "nope", Op: &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: "Device.X.Frobnicate()"}}},
	)
	c.session(c.inform(cwmp.EventPeriodic))
	reqs := e.workRequests()
	if r := resultOf(t, reqs, "rb"); r.Error.GetCode() != duetv1.ErrorCode(devicemodel.CodeDenied) || r.Error.DeviceFault != 9001 {
		t.Errorf("reboot fault %v", r.Error)
	}
	if r := resultOf(t, reqs, "dl"); r.Error.GetCode() != duetv1.ErrorCode_ERROR_CODE_TRANSFER_FAILED || r.Error.DeviceFault != 9015 {
		t.Errorf("download fault %v", r.Error)
	}
	if r := resultOf(t, reqs, "fr"); r.Error != nil {
		t.Errorf("factory reset %v", r.Error)
	}
	if r := resultOf(t, reqs, "nope"); r.Error.GetCode() != duetv1.ErrorCode_ERROR_CODE_UNSUPPORTED {
		t.Errorf("unsupported operate %v", r.Error)
	}
	if !slices.Equal(c.handled, []string{"Reboot", "Download", "FactoryReset"}) {
		t.Errorf("RPCs %v", c.handled)
	}
}
