package cpe

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/cwmp"
)

const (
	tr181Path = "../../../testdata/datamodel/tr181.json"
	tr098Path = "../../../testdata/datamodel/tr098.json"
)

// waitFor polls fn until it is true or the deadline passes (no sleeps as
// synchronisation: the poll interval only paces the check).
func waitFor(t *testing.T, what string, fn func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !fn() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// testACS is a tiny ACS built on pkg/cwmp: it answers Informs and CPE
// requests, then hands out queued requests one per POST and records the
// answers (TR-069 §3.7).
type testACS struct {
	srv *httptest.Server

	mu         sync.Mutex
	informs    []*cwmp.Inform
	namespaces []string
	tcs        []*cwmp.TransferComplete
	dus        []*cwmp.DUStateChangeComplete
	queue      []cwmp.Message
	answers    []cwmp.Message
	cookies    []bool // Cookie header present on each non-Inform POST
	remotes    []string
	encodings  []string // Content-Encoding of each POST
	nextID     int

	// gate, when set, holds the next empty POST open until closed, after
	// closing entered: a session that is provably in progress.
	gate, entered chan struct{}
	// ended, when set, receives after every 204 that ends a session.
	ended chan struct{}

	user, pass string
	basic      bool
	digest     *digestServer
	authFails  int
}

func newTestACS(t *testing.T) *testACS {
	a := &testACS{digest: newDigestServer("acs")}
	a.srv = httptest.NewServer(a)
	t.Cleanup(a.srv.Close)
	return a
}

func (a *testACS) authorized(w http.ResponseWriter, r *http.Request) bool {
	if a.user == "" {
		return true
	}
	if a.basic {
		u, p, ok := r.BasicAuth()
		if ok && u == a.user && p == a.pass {
			return true
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="acs"`)
		w.WriteHeader(http.StatusUnauthorized)
	} else {
		if a.digest.check(r, a.user, a.pass) {
			return true
		}
		a.digest.challenge(w)
	}
	a.mu.Lock()
	a.authFails++
	a.mu.Unlock()
	return false
}

func (a *testACS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(w, r) {
		return
	}
	body, err := cwmp.ReadBody(r.Body, r.Header.Get("Content-Encoding"), 0)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	env, err := cwmp.Decode(body, r.Header.Get("Content-Type"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	a.mu.Lock()
	gate, entered := a.gate, a.entered
	if env.IsEmpty() {
		a.gate = nil
	}
	a.mu.Unlock()
	if env.IsEmpty() && gate != nil {
		close(entered)
		<-gate
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.remotes = append(a.remotes, r.RemoteAddr)
	a.encodings = append(a.encodings, r.Header.Get("Content-Encoding"))
	reply := func(m cwmp.Message, id string) {
		out, err := cwmp.Encode(&cwmp.Envelope{Namespace: env.Namespace, Header: cwmp.Header{ID: id}, Body: m})
		if err != nil {
			panic(err)
		}
		w.Header().Set("Content-Type", cwmp.ContentType)
		w.Write(out)
	}
	switch m := env.Body.(type) {
	case *cwmp.Inform:
		a.informs = append(a.informs, m)
		a.namespaces = append(a.namespaces, env.Namespace)
		http.SetCookie(w, &http.Cookie{Name: "session", Value: fmt.Sprint(len(a.informs))})
		reply(&cwmp.InformResponse{MaxEnvelopes: 1}, env.Header.ID)
		return
	case *cwmp.TransferComplete:
		a.tcs = append(a.tcs, m)
		reply(&cwmp.TransferCompleteResponse{}, env.Header.ID)
		return
	case *cwmp.DUStateChangeComplete:
		a.dus = append(a.dus, m)
		reply(&cwmp.DUStateChangeCompleteResponse{}, env.Header.ID)
		return
	}
	_, err = r.Cookie("session")
	a.cookies = append(a.cookies, err == nil)
	if env.Body != nil {
		a.answers = append(a.answers, env.Body)
	}
	if len(a.queue) == 0 {
		w.WriteHeader(http.StatusNoContent) // end of session
		if a.ended != nil {
			select {
			case a.ended <- struct{}{}:
			default:
			}
		}
		return
	}
	next := a.queue[0]
	a.queue = a.queue[1:]
	a.nextID++
	reply(next, fmt.Sprint("acs-", a.nextID))
}

func (a *testACS) enqueue(ms ...cwmp.Message) {
	a.mu.Lock()
	a.queue = append(a.queue, ms...)
	a.mu.Unlock()
}

func (a *testACS) numInforms() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.informs)
}

// waitInform returns the n-th (1-based) Inform.
func (a *testACS) waitInform(t *testing.T, n int) *cwmp.Inform {
	t.Helper()
	waitFor(t, fmt.Sprintf("inform #%d", n), func() bool { return a.numInforms() >= n })
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.informs[n-1]
}

// waitAnswers waits until n answers arrived and the queue is drained.
func (a *testACS) waitAnswers(t *testing.T, n int) []cwmp.Message {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d answers", n), func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return len(a.answers) >= n
	})
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.answers)
}

func eventCodes(in *cwmp.Inform) []string {
	var out []string
	for _, e := range in.Event {
		out = append(out, e.EventCode)
	}
	return out
}

func hasEvent(in *cwmp.Inform, code, key string) bool {
	for _, e := range in.Event {
		if e.EventCode == code && e.CommandKey == key {
			return true
		}
	}
	return false
}

func informParam(in *cwmp.Inform, name string) (string, bool) {
	for _, p := range in.ParameterList {
		if p.Name == name {
			return p.Value.Data, true
		}
	}
	return "", false
}

func startCPE(t *testing.T, acs *testACS, mutate func(*Options)) *CPE {
	t.Helper()
	o := Options{ACSURL: acs.srv.URL + "/acs", DataModelPath: tr181Path, OUI: "00D09E", ProductClass: "DuetGW", Serial: "T0001"}
	if mutate != nil {
		mutate(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// bootstrapped starts a CPE and waits for its first session to finish.
func bootstrapped(t *testing.T, acs *testACS, mutate func(*Options)) *CPE {
	t.Helper()
	c := startCPE(t, acs, mutate)
	acs.waitInform(t, 1)
	waitFor(t, "first session", func() bool { return c.Stats().Sessions >= 1 })
	return c
}

func TestBootstrapInform(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	in := acs.waitInform(t, 1)
	if got := eventCodes(in); !slices.Equal(got, []string{cwmp.EventBootstrap, cwmp.EventBoot}) {
		t.Fatalf("events %v", got)
	}
	if in.DeviceId.OUI != "00D09E" || in.DeviceId.SerialNumber != "T0001" || in.DeviceId.ProductClass != "DuetGW" || in.MaxEnvelopes != 1 {
		t.Fatalf("device id %+v", in.DeviceId)
	}
	for _, p := range []string{"Device.RootDataModelVersion", "Device.DeviceInfo.HardwareVersion", "Device.DeviceInfo.SoftwareVersion",
		"Device.DeviceInfo.ProvisioningCode", "Device.ManagementServer.ParameterKey", "Device.ManagementServer.AliasBasedAddressing"} {
		if _, ok := informParam(in, p); !ok {
			t.Errorf("forced inform parameter %s missing", p)
		}
	}
	if u, _ := informParam(in, "Device.ManagementServer.ConnectionRequestURL"); u == "" || u != c.ConnectionRequestURL() {
		t.Fatalf("ConnectionRequestURL %q vs %q", u, c.ConnectionRequestURL())
	}
	if c.DeviceID() != "00D09E-DuetGW-T0001" {
		t.Fatal(c.DeviceID())
	}
	// The session ended with the empty POST answered by 204, cookie echoed.
	acs.mu.Lock()
	defer acs.mu.Unlock()
	if len(acs.cookies) != 1 || !acs.cookies[0] {
		t.Fatalf("empty POST cookies %v", acs.cookies)
	}
}

func TestTR098Bootstrap(t *testing.T) {
	acs := newTestACS(t)
	bootstrapped(t, acs, func(o *Options) {
		o.DataModelPath = tr098Path
		o.Namespace = cwmp.NamespaceCWMP12
		o.Bootstrapped = true
	})
	in := acs.waitInform(t, 1)
	if got := eventCodes(in); !slices.Equal(got, []string{cwmp.EventBoot}) {
		t.Fatalf("events %v", got)
	}
	for _, p := range []string{"InternetGatewayDevice.DeviceSummary", "InternetGatewayDevice.DeviceInfo.SpecVersion",
		"InternetGatewayDevice.WANDevice.1.WANConnectionDevice.1.WANIPConnection.1.ExternalIPAddress",
		"InternetGatewayDevice.ManagementServer.ConnectionRequestURL"} {
		if _, ok := informParam(in, p); !ok {
			t.Errorf("forced inform parameter %s missing", p)
		}
	}
	acs.mu.Lock()
	defer acs.mu.Unlock()
	if acs.namespaces[0] != cwmp.NamespaceCWMP12 {
		t.Fatal(acs.namespaces[0])
	}
}

func faultOf(t *testing.T, m cwmp.Message) *cwmp.Fault {
	t.Helper()
	f, ok := m.(*cwmp.Fault)
	if !ok {
		t.Fatalf("want a Fault, got %T %+v", m, m)
	}
	return f
}

func TestParameterRPCs(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	str := func(s string) cwmp.Value { return cwmp.Value{Type: cwmp.TypeString, Data: s} }
	pm := "Device.NAT.PortMapping."
	acs.enqueue(
		&cwmp.GetParameterValues{ParameterNames: []string{"Device.DeviceInfo.", "Device.ManagementServer.URL"}}, // 0
		&cwmp.GetParameterValues{ParameterNames: []string{"Device.Nope"}},                                       // 1
		&cwmp.SetParameterValues{ParameterKey: "pk-1", ParameterList: []cwmp.ParameterValueStruct{ // 2
			{Name: "Device.WiFi.SSID.1.SSID", Value: str("guest")},
			{Name: "Device.ManagementServer.PeriodicInformInterval", Value: cwmp.Value{Type: cwmp.TypeUnsignedInt, Data: " 600 "}},
		}},
		&cwmp.SetParameterValues{ParameterKey: "pk-2", ParameterList: []cwmp.ParameterValueStruct{ // 3: atomic failure
			{Name: "Device.WiFi.SSID.2.SSID", Value: str("must-not-stick")},
			{Name: "Device.No.Such", Value: str("x")},
			{Name: "Device.DeviceInfo.SerialNumber", Value: str("x")},
			{Name: "Device.WiFi.Radio.1.Channel", Value: cwmp.Value{Type: cwmp.TypeUnsignedInt, Data: "abc"}},
			{Name: "Device.WiFi.Radio.1.Enable", Value: cwmp.Value{Type: cwmp.TypeDateTime, Data: "2024-01-01T00:00:00Z"}},
		}},
		&cwmp.GetParameterNames{ParameterPath: "Device.WiFi.", NextLevel: true},             // 4
		&cwmp.GetParameterNames{ParameterPath: "Device.WiFi.SSID.1.SSID", NextLevel: false}, // 5
		&cwmp.GetParameterNames{ParameterPath: "Device.WiFi.SSID.1.SSID", NextLevel: true},  // 6
		&cwmp.AddObject{ObjectName: pm, ParameterKey: "pk-3"},                               // 7
		&cwmp.AddObject{ObjectName: pm},                                                     // 8
		&cwmp.DeleteObject{ObjectName: pm + "3.", ParameterKey: "pk-4"},                     // 9
		&cwmp.AddObject{ObjectName: pm},                                                     // 10
		&cwmp.DeleteObject{ObjectName: pm + "3."},                                           // 11
		&cwmp.AddObject{ObjectName: "Device.DeviceInfo."},                                   // 12
		&cwmp.SetParameterAttributes{ParameterList: []cwmp.SetParameterAttributesStruct{ // 13
			{Name: "Device.WiFi.SSID.1.SSID", NotificationChange: true, Notification: 2}}},
		&cwmp.GetParameterAttributes{ParameterNames: []string{"Device.WiFi.SSID.1.SSID"}}, // 14
		&cwmp.SetParameterAttributes{ParameterList: []cwmp.SetParameterAttributesStruct{ // 15
			{Name: "Device.DeviceInfo.UpTime", NotificationChange: true, Notification: 2}}},
		&cwmp.GetRPCMethods{}, // 16
		&cwmp.SetVouchers{},   // 17
		&cwmp.GetParameterValues{ParameterNames: []string{pm}}, // 18
	)
	c.Wake()
	ans := acs.waitAnswers(t, 19)

	gpv := ans[0].(*cwmp.GetParameterValuesResponse)
	if len(gpv.ParameterList) < 15 || gpv.ParameterList[len(gpv.ParameterList)-1].Name != "Device.ManagementServer.URL" {
		t.Fatalf("partial-path GPV returned %d params", len(gpv.ParameterList))
	}
	for _, p := range gpv.ParameterList[:len(gpv.ParameterList)-1] {
		if !strings.HasPrefix(p.Name, "Device.DeviceInfo.") {
			t.Fatalf("GPV leaked %s", p.Name)
		}
	}
	if f := faultOf(t, ans[1]); f.Detail.FaultCode != 9005 || f.SOAPCode != "Client" {
		t.Fatalf("%+v", f)
	}
	if r := ans[2].(*cwmp.SetParameterValuesResponse); r.Status != 0 {
		t.Fatal(r.Status)
	}
	if v, _ := c.Value("Device.WiFi.SSID.1.SSID"); v != "guest" {
		t.Fatalf("SSID %q", v)
	}
	if v, _ := c.Value("Device.ManagementServer.PeriodicInformInterval"); v != "600" {
		t.Fatalf("interval %q", v)
	}
	f := faultOf(t, ans[3])
	got := map[string]uint32{}
	for _, pf := range f.Detail.SetParameterValuesFault {
		got[pf.ParameterName] = pf.FaultCode
	}
	want := map[string]uint32{"Device.No.Such": 9005, "Device.DeviceInfo.SerialNumber": 9008,
		"Device.WiFi.Radio.1.Channel": 9007, "Device.WiFi.Radio.1.Enable": 9006}
	if f.Detail.FaultCode != 9003 || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("SPV fault %d %v", f.Detail.FaultCode, got)
	}
	if v, _ := c.Value("Device.WiFi.SSID.2.SSID"); v == "must-not-stick" {
		t.Fatal("SetParameterValues is not atomic")
	}
	gpn := ans[4].(*cwmp.GetParameterNamesResponse)
	var names []string
	for _, p := range gpn.ParameterList {
		names = append(names, p.Name)
	}
	if !slices.Contains(names, "Device.WiFi.SSID.") || !slices.Contains(names, "Device.WiFi.RadioNumberOfEntries") || slices.Contains(names, "Device.WiFi.SSID.1.") {
		t.Fatalf("NextLevel=true names %v", names)
	}
	if g := ans[5].(*cwmp.GetParameterNamesResponse); len(g.ParameterList) != 1 || !g.ParameterList[0].Writable {
		t.Fatalf("%+v", g)
	}
	if f := faultOf(t, ans[6]); f.Detail.FaultCode != 9003 {
		t.Fatal(f.Detail.FaultCode)
	}
	if r := ans[7].(*cwmp.AddObjectResponse); r.InstanceNumber != 2 {
		t.Fatalf("first AddObject instance %d", r.InstanceNumber)
	}
	if r := ans[8].(*cwmp.AddObjectResponse); r.InstanceNumber != 3 {
		t.Fatalf("second AddObject instance %d", r.InstanceNumber)
	}
	if _, ok := ans[9].(*cwmp.DeleteObjectResponse); !ok {
		t.Fatalf("%+v", ans[9])
	}
	if r := ans[10].(*cwmp.AddObjectResponse); r.InstanceNumber != 4 {
		t.Fatalf("instance numbers must not be reused: got %d", r.InstanceNumber)
	}
	if f := faultOf(t, ans[11]); f.Detail.FaultCode != 9005 {
		t.Fatal(f.Detail.FaultCode)
	}
	if f := faultOf(t, ans[12]); f.Detail.FaultCode != 9005 {
		t.Fatal(f.Detail.FaultCode)
	}
	if _, ok := ans[13].(*cwmp.SetParameterAttributesResponse); !ok {
		t.Fatalf("%+v", ans[13])
	}
	if g := ans[14].(*cwmp.GetParameterAttributesResponse); len(g.ParameterList) != 1 || g.ParameterList[0].Notification != 2 {
		t.Fatalf("%+v", g)
	}
	if f := faultOf(t, ans[15]); f.Detail.FaultCode != 9009 {
		t.Fatal(f.Detail.FaultCode)
	}
	if r := ans[16].(*cwmp.GetRPCMethodsResponse); !slices.Contains(r.MethodList, "Download") {
		t.Fatalf("%+v", r)
	}
	if f := faultOf(t, ans[17]); f.Detail.FaultCode != 9000 {
		t.Fatal(f.Detail.FaultCode)
	}
	g18 := ans[18].(*cwmp.GetParameterValuesResponse)
	seen := map[string]bool{}
	for _, p := range g18.ParameterList {
		seen[strings.SplitN(strings.TrimPrefix(p.Name, pm), ".", 2)[0]] = true
	}
	if fmt.Sprint(seen) != "map[1:true 2:true 4:true]" {
		t.Fatalf("instances after add/delete: %v", seen)
	}
	if v, _ := c.Value("Device.NAT.PortMappingNumberOfEntries"); v != "3" {
		t.Fatalf("NumberOfEntries %q", v)
	}
	if v, _ := c.Value("Device.ManagementServer.ParameterKey"); v != "" {
		// the last keyed call was AddObject #10 with an empty key
		t.Fatalf("ParameterKey %q", v)
	}
}

func TestParameterKeyStored(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	acs.enqueue(&cwmp.SetParameterValues{ParameterKey: "pk-77", ParameterList: []cwmp.ParameterValueStruct{
		{Name: "Device.DeviceInfo.ProvisioningCode", Value: cwmp.Value{Type: cwmp.TypeString, Data: "PC1"}}}})
	c.Wake()
	acs.waitAnswers(t, 1)
	if v, _ := c.Value("Device.ManagementServer.ParameterKey"); v != "pk-77" {
		t.Fatalf("ParameterKey %q", v)
	}
	c.Wake()
	in := acs.waitInform(t, 3)
	if v, _ := informParam(in, "Device.ManagementServer.ParameterKey"); v != "pk-77" {
		t.Fatalf("forced ParameterKey %q", v)
	}
	if v, _ := informParam(in, "Device.DeviceInfo.ProvisioningCode"); v != "PC1" {
		t.Fatalf("ProvisioningCode %q", v)
	}
	if !slices.Equal(eventCodes(in), []string{cwmp.EventConnectionRequest}) {
		t.Fatalf("events %v", eventCodes(in))
	}
}

func TestRebootCycle(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	acs.enqueue(&cwmp.Reboot{CommandKey: "reboot-1"})
	c.Wake()
	if _, ok := acs.waitAnswers(t, 1)[0].(*cwmp.RebootResponse); !ok {
		t.Fatal("no RebootResponse")
	}
	in := acs.waitInform(t, 3)
	if !hasEvent(in, cwmp.EventBoot, "") || !hasEvent(in, cwmp.EventMReboot, "reboot-1") || hasEvent(in, cwmp.EventBootstrap, "") {
		t.Fatalf("after reboot: %+v", in.Event)
	}
}

func TestFactoryReset(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	acs.enqueue(&cwmp.SetParameterValues{ParameterList: []cwmp.ParameterValueStruct{
		{Name: "Device.WiFi.SSID.1.SSID", Value: cwmp.Value{Data: "changed"}}}}, &cwmp.AddObject{ObjectName: "Device.NAT.PortMapping."}, &cwmp.FactoryReset{})
	c.Wake()
	acs.waitAnswers(t, 3)
	in := acs.waitInform(t, 3)
	if got := eventCodes(in); !slices.Equal(got, []string{cwmp.EventBootstrap, cwmp.EventBoot}) {
		t.Fatalf("after factory reset: %v", got)
	}
	if v, _ := c.Value("Device.WiFi.SSID.1.SSID"); v != "Duet-2.4GHz" {
		t.Fatalf("SSID not restored: %q", v)
	}
	if _, ok := c.Value("Device.NAT.PortMapping.2.Enable"); ok {
		t.Fatal("added instance survived the reset")
	}
	if v, _ := c.Value("Device.DeviceInfo.SerialNumber"); v != "T0001" {
		t.Fatalf("identity lost: %q", v)
	}
}

func TestDownloadTransferComplete(t *testing.T) {
	var mu sync.Mutex
	var uploaded string
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodGet && r.URL.Path == "/fw.bin":
			io.WriteString(w, "2.0.0\nbinary image follows\n")
		case r.Method == http.MethodPut:
			b, _ := io.ReadAll(r.Body)
			mu.Lock()
			uploaded = string(b)
			mu.Unlock()
			w.WriteHeader(http.StatusCreated)
		default:
			http.NotFound(w, r)
		}
	}))
	defer files.Close()
	acs := newTestACS(t)
	c := bootstrapped(t, acs, func(o *Options) { o.FirmwareUpdatesVersion = true })
	acs.enqueue(&cwmp.Download{CommandKey: "fw-1", FileType: cwmp.FileTypeFirmware, URL: files.URL + "/fw.bin"})
	c.Wake()
	if r := acs.waitAnswers(t, 1)[0].(*cwmp.DownloadResponse); r.Status != 1 {
		t.Fatalf("Download status %d", r.Status)
	}
	in := acs.waitInform(t, 3)
	if !hasEvent(in, cwmp.EventTransferComplete, "") || !hasEvent(in, cwmp.EventMDownload, "fw-1") || !hasEvent(in, cwmp.EventBoot, "") {
		t.Fatalf("events %+v", in.Event)
	}
	if v, _ := informParam(in, "Device.DeviceInfo.SoftwareVersion"); v != "2.0.0" {
		t.Fatalf("SoftwareVersion %q", v)
	}
	waitFor(t, "TransferComplete", func() bool { acs.mu.Lock(); defer acs.mu.Unlock(); return len(acs.tcs) == 1 })
	acs.mu.Lock()
	tc := acs.tcs[0]
	acs.mu.Unlock()
	if tc.CommandKey != "fw-1" || tc.FaultStruct.FaultCode != 0 || tc.StartTime.IsZero() || tc.CompleteTime.Before(tc.StartTime) {
		t.Fatalf("%+v", tc)
	}

	// A missing file fails with a 9010–9019 code; an upload PUTs the config.
	acs.enqueue(&cwmp.Download{CommandKey: "fw-2", FileType: cwmp.FileTypeFirmware, URL: files.URL + "/missing.bin"},
		&cwmp.Upload{CommandKey: "up-1", FileType: cwmp.UploadTypeVendorCfg, URL: files.URL + "/cfg"})
	c.Wake()
	waitFor(t, "two more TransferCompletes", func() bool { acs.mu.Lock(); defer acs.mu.Unlock(); return len(acs.tcs) == 3 })
	acs.mu.Lock()
	byKey := map[string]uint32{}
	for _, tc := range acs.tcs[1:] {
		byKey[tc.CommandKey] = tc.FaultStruct.FaultCode
	}
	acs.mu.Unlock()
	if code := byKey["fw-2"]; code < 9010 || code > 9019 {
		t.Fatalf("failed download FaultCode %d", code)
	}
	if byKey["up-1"] != 0 {
		t.Fatalf("upload FaultCode %d", byKey["up-1"])
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(uploaded, "Device.DeviceInfo.SoftwareVersion=2.0.0\n") {
		t.Fatalf("uploaded config: %.200q", uploaded)
	}
}

func TestQueuedTransfersAndCancel(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	acs.enqueue(
		&cwmp.Download{CommandKey: "later", FileType: cwmp.FileTypeFirmware, URL: "http://127.0.0.1:1/x", DelaySeconds: 3600},
		&cwmp.GetAllQueuedTransfers{},
		&cwmp.CancelTransfer{CommandKey: "later"},
		&cwmp.GetQueuedTransfers{},
		&cwmp.CancelTransfer{CommandKey: "nope"},
		&cwmp.Download{CommandKey: "ftp", URL: "ftp://example.com/x"},
	)
	c.Wake()
	ans := acs.waitAnswers(t, 6)
	aq := ans[1].(*cwmp.GetAllQueuedTransfersResponse)
	if len(aq.TransferList) != 1 || aq.TransferList[0].CommandKey != "later" || aq.TransferList[0].State != 1 || !aq.TransferList[0].IsDownload {
		t.Fatalf("%+v", aq)
	}
	if _, ok := ans[2].(*cwmp.CancelTransferResponse); !ok {
		t.Fatalf("%+v", ans[2])
	}
	if q := ans[3].(*cwmp.GetQueuedTransfersResponse); len(q.TransferList) != 0 {
		t.Fatalf("%+v", q)
	}
	if f := faultOf(t, ans[4]); f.Detail.FaultCode != 9003 {
		t.Fatal(f.Detail.FaultCode)
	}
	if f := faultOf(t, ans[5]); f.Detail.FaultCode != 9013 {
		t.Fatal(f.Detail.FaultCode)
	}
}

func TestDiagnosticsComplete(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	d := "Device.IP.Diagnostics.IPPing."
	acs.enqueue(&cwmp.SetParameterValues{ParameterList: []cwmp.ParameterValueStruct{
		{Name: d + "Host", Value: cwmp.Value{Data: "127.0.0.1"}},
		{Name: d + "NumberOfRepetitions", Value: cwmp.Value{Type: cwmp.TypeUnsignedInt, Data: "4"}},
		{Name: d + "DiagnosticsState", Value: cwmp.Value{Data: "Requested"}},
	}})
	c.Wake()
	acs.waitAnswers(t, 1)
	in := acs.waitInform(t, 3)
	if !slices.Equal(eventCodes(in), []string{cwmp.EventDiagnosticsComplete}) {
		t.Fatalf("events %v", eventCodes(in))
	}
	if v, _ := c.Value(d + "DiagnosticsState"); v != "Complete" {
		t.Fatalf("state %q", v)
	}
	if v, _ := c.Value(d + "SuccessCount"); v != "4" {
		t.Fatalf("SuccessCount %q", v)
	}
	// Only Requested may be written.
	acs.enqueue(&cwmp.SetParameterValues{ParameterList: []cwmp.ParameterValueStruct{{Name: d + "DiagnosticsState", Value: cwmp.Value{Data: "Complete"}}}})
	c.Wake()
	if f := faultOf(t, acs.waitAnswers(t, 2)[1]); f.Detail.SetParameterValuesFault[0].FaultCode != 9007 {
		t.Fatalf("%+v", f)
	}
}

func TestChangeDUState(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	acs.enqueue(&cwmp.ChangeDUState{CommandKey: "du-1", Operations: []cwmp.DUOperation{{Kind: cwmp.DUInstall, URL: "http://x/app.ipk"}}})
	c.Wake()
	acs.waitAnswers(t, 1)
	in := acs.waitInform(t, 3)
	if !hasEvent(in, cwmp.EventDUStateChangeComplete, "") || !hasEvent(in, cwmp.EventMChangeDUState, "du-1") {
		t.Fatalf("events %+v", in.Event)
	}
	waitFor(t, "DUStateChangeComplete", func() bool { acs.mu.Lock(); defer acs.mu.Unlock(); return len(acs.dus) == 1 })
	acs.mu.Lock()
	defer acs.mu.Unlock()
	r := acs.dus[0].Results
	if len(r) != 1 || r[0].CurrentState != "Installed" || len(r[0].UUID) != 36 {
		t.Fatalf("%+v", r)
	}
}

func TestValueChangeAndPeriodic(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	ssid := "Device.WiFi.SSID.1.SSID"
	acs.enqueue(&cwmp.SetParameterAttributes{ParameterList: []cwmp.SetParameterAttributesStruct{{Name: ssid, NotificationChange: true, Notification: 2}}})
	c.Wake()
	acs.waitAnswers(t, 1)
	waitFor(t, "second session", func() bool { return c.Stats().Sessions >= 2 })
	if err := c.SetParameterValue(ssid, "local-change"); err != nil {
		t.Fatal(err)
	}
	in := acs.waitInform(t, 3)
	if !slices.Equal(eventCodes(in), []string{cwmp.EventValueChange}) {
		t.Fatalf("events %v", eventCodes(in))
	}
	if v, ok := informParam(in, ssid); !ok || v != "local-change" {
		t.Fatalf("changed value %q %v", v, ok)
	}
	// A passive change waits for the next session and rides along with it.
	acs.enqueue(&cwmp.SetParameterAttributes{ParameterList: []cwmp.SetParameterAttributesStruct{{Name: "Device.WiFi.Radio.1.Channel", NotificationChange: true, Notification: 1}}})
	c.Wake()
	acs.waitAnswers(t, 2)
	waitFor(t, "fourth session", func() bool { return c.Stats().Sessions >= 4 })
	if err := c.SetParameterValue("Device.WiFi.Radio.1.Channel", "11"); err != nil {
		t.Fatal(err)
	}
	c.Wake()
	in = acs.waitInform(t, 5)
	if !slices.Equal(eventCodes(in), []string{cwmp.EventConnectionRequest, cwmp.EventValueChange}) {
		t.Fatalf("events %v", eventCodes(in))
	}
	if v, _ := informParam(in, "Device.WiFi.Radio.1.Channel"); v != "11" {
		t.Fatalf("passive change %q", v)
	}
	if n := acs.numInforms(); n != 5 {
		t.Fatalf("the passive change started a session of its own: %d informs", n)
	}
	if err := c.SetParameterValue("Device.WiFi.Radio.1.Channel", "x"); err == nil {
		t.Fatal("bad local value accepted")
	}

	acs2 := newTestACS(t)
	c2 := bootstrapped(t, acs2, func(o *Options) { o.PeriodicInterval = 20 * time.Millisecond })
	in = acs2.waitInform(t, 3)
	if !hasEvent(in, cwmp.EventPeriodic, "") {
		t.Fatalf("events %v", eventCodes(in))
	}
	_ = c2
}

func TestConnectionRequestDigest(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, func(o *Options) { o.ConnReqUsername = "cr-user"; o.ConnReqPassword = "cr-pass" })
	get := func(pass string) int {
		t.Helper()
		resp, err := http.Get(c.ConnectionRequestURL())
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("first GET: %d, want a 401 challenge", resp.StatusCode)
		}
		a := newClientAuth("cr-user", pass, resp.Header.Values("WWW-Authenticate"))
		if a == nil || a.basic || !a.qop {
			t.Fatalf("challenge %q", resp.Header.Values("WWW-Authenticate"))
		}
		req, _ := http.NewRequest(http.MethodGet, c.ConnectionRequestURL(), nil)
		req.Header.Set("Authorization", a.header(http.MethodGet, req.URL.RequestURI()))
		resp, err = http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := get("wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong password: %d", code)
	}
	if n := acs.numInforms(); n != 1 {
		t.Fatalf("a rejected request started a session (%d informs)", n)
	}
	if code := get("cr-pass"); code != http.StatusOK {
		t.Fatalf("right password: %d", code)
	}
	in := acs.waitInform(t, 2)
	if !slices.Equal(eventCodes(in), []string{cwmp.EventConnectionRequest}) {
		t.Fatalf("events %v", eventCodes(in))
	}
	if c.Stats().ConnectionRequests != 1 {
		t.Fatalf("%+v", c.Stats())
	}
	resp, err := http.Post(c.ConnectionRequestURL(), "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", resp.StatusCode)
	}
}

func TestConnectionRequestBusyAndScheduleInform(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil) // no CR credentials: no challenge
	gate, entered := make(chan struct{}), make(chan struct{})
	acs.mu.Lock()
	acs.gate, acs.entered = gate, entered
	acs.queue = append(acs.queue, &cwmp.ScheduleInform{DelaySeconds: 1, CommandKey: "si-1"})
	acs.mu.Unlock()
	c.Wake()
	<-entered // the CPE is inside a session now
	resp, err := http.Get(c.ConnectionRequestURL())
	close(gate)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("connection request during a session: %d, want 503", resp.StatusCode)
	}
	acs.waitAnswers(t, 1)
	in := acs.waitInform(t, 3)
	if !hasEvent(in, cwmp.EventScheduled, "") || !hasEvent(in, cwmp.EventMScheduleInform, "si-1") {
		t.Fatalf("events %+v", in.Event)
	}
	if c.Stats().ConnectionRequests != 0 {
		t.Fatal("the refused request was counted")
	}
}

func TestACSAuthentication(t *testing.T) {
	for _, basic := range []bool{false, true} {
		t.Run(fmt.Sprint("basic=", basic), func(t *testing.T) {
			acs := newTestACS(t)
			acs.user, acs.pass, acs.basic = "cpe", "secret", basic
			c := bootstrapped(t, acs, func(o *Options) { o.Username = "cpe"; o.Password = "secret" })
			acs.enqueue(&cwmp.GetRPCMethods{})
			c.Wake()
			acs.waitAnswers(t, 1)
			acs.mu.Lock()
			fails := acs.authFails
			acs.mu.Unlock()
			// One challenge per session (the Inform); later POSTs reuse the credentials.
			if fails != 2 {
				t.Fatalf("%d 401s over 2 sessions", fails)
			}
		})
	}
	acs := newTestACS(t)
	acs.user, acs.pass = "cpe", "secret"
	c := startCPE(t, acs, func(o *Options) { o.Username = "cpe"; o.Password = "wrong"; o.RetryMinWait = time.Hour })
	waitFor(t, "a failed session", func() bool { return c.Stats().FailedSessions >= 1 })
	if acs.numInforms() != 0 || c.Stats().Informs != 0 {
		t.Fatal("wrong password got through")
	}
}

func TestCookieAndConnectionTolerance(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, func(o *Options) { o.IgnoreCookies = true; o.NewConnectionPerPOST = true })
	acs.enqueue(&cwmp.GetRPCMethods{}, &cwmp.GetRPCMethods{})
	c.Wake()
	acs.waitAnswers(t, 2)
	waitFor(t, "second session", func() bool { return c.Stats().Sessions >= 2 })
	acs.mu.Lock()
	defer acs.mu.Unlock()
	for i, had := range acs.cookies {
		if had {
			t.Fatalf("POST %d sent a cookie despite IgnoreCookies", i)
		}
	}
	seen := map[string]bool{}
	for _, r := range acs.remotes {
		if seen[r] {
			t.Fatalf("connection %s reused despite NewConnectionPerPOST", r)
		}
		seen[r] = true
	}
}

func TestCompressedPosts(t *testing.T) {
	for _, enc := range []string{"gzip", "deflate"} {
		t.Run(enc, func(t *testing.T) {
			acs := newTestACS(t)
			bootstrapped(t, acs, func(o *Options) { o.Compression = enc })
			acs.mu.Lock()
			defer acs.mu.Unlock()
			// The Inform is compressed; the empty POST has no body to compress.
			if len(acs.encodings) != 2 || acs.encodings[0] != enc || acs.encodings[1] != "" {
				t.Fatalf("encodings %q", acs.encodings)
			}
		})
	}
	if _, err := New(Options{ACSURL: "http://x", DataModelPath: tr181Path, Compression: "br"}); err == nil {
		t.Fatal("unknown compression accepted")
	}
}

func TestFleetNoLeaks(t *testing.T) {
	before := runtime.NumGoroutine()
	acs := newTestACS(t)
	f, err := NewFleet(FleetOptions{N: 5, Template: Options{ACSURL: acs.srv.URL, DataModelPath: tr098Path}, SerialPrefix: "FL"})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := f.Start(context.Background()); err == nil {
		t.Fatal("second Start accepted")
	}
	waitFor(t, "five sessions", func() bool { return f.Stats().Sessions == 5 })
	serials := map[string]bool{}
	acs.mu.Lock()
	for _, in := range acs.informs {
		serials[in.DeviceId.SerialNumber] = true
	}
	acs.mu.Unlock()
	if len(serials) != 5 || !serials["FL000001"] || !serials["FL000005"] {
		t.Fatalf("serials %v", serials)
	}
	if s := f.Stats(); s.CPEs != 5 || s.Informs != 5 {
		t.Fatalf("%+v", s)
	}
	f.Close()
	f.Close()
	acs.srv.Close()
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	waitFor(t, "goroutines to exit", func() bool { return runtime.NumGoroutine() <= before })
}

func TestOptionsValidation(t *testing.T) {
	for name, o := range map[string]Options{
		"no URL":       {DataModelPath: tr181Path},
		"bad URL":      {ACSURL: "ftp://x", DataModelPath: tr181Path},
		"no model":     {ACSURL: "http://x"},
		"bad ns":       {ACSURL: "http://x", DataModelPath: tr181Path, Namespace: "urn:x"},
		"missing file": {ACSURL: "http://x", DataModelPath: "nope.json"},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	c, err := New(Options{ACSURL: "http://127.0.0.1:1", DataModelPath: tr181Path})
	if err != nil {
		t.Fatal(err)
	}
	c.Close() // before Start: fine, twice
	c.Close()
	if err := c.Start(context.Background()); err == nil {
		t.Fatal("Start after Close accepted")
	}
}

func TestDigestVector(t *testing.T) {
	// RFC 2617 §3.5 example.
	got := digestResponse("Mufasa", "testrealm@host.com", "Circle Of Life", "GET", "/dir/index.html",
		"dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "auth")
	if got != "6629fae49393a05397450978507c4ef1" {
		t.Fatal(got)
	}
	s, p := parseAuthParams(`Digest realm="a, b", qop="auth,auth-int", nonce="n\"1", algorithm=MD5`)
	if s != "digest" || p["realm"] != "a, b" || p["qop"] != "auth,auth-int" || p["nonce"] != `n"1` || p["algorithm"] != "MD5" {
		t.Fatalf("%s %v", s, p)
	}
}

func TestDataModels(t *testing.T) {
	for _, path := range []string{tr181Path, tr098Path} {
		dm, err := LoadDataModel(path)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(dm.Parameters); n < 100 || n > 250 {
			t.Errorf("%s: %d parameters, want 100–250", path, n)
		}
		m, err := newModel(dm)
		if err != nil {
			t.Fatal(err)
		}
		for p, v := range m.params {
			if err := cwmp.ValidateValue(v.typ, v.value); err != nil {
				t.Errorf("%s: %s: %v", path, p, err)
			}
		}
		if len(m.tables) == 0 {
			t.Errorf("%s: no writable table", path)
		}
	}
}

// BenchmarkSessionGetParameterValues measures one whole CWMP session over
// loopback HTTP: Inform, empty POST, a GPV of the DeviceInfo subtree, 204.
func BenchmarkSessionGetParameterValues(b *testing.B) {
	acs := &testACS{digest: newDigestServer("acs"), ended: make(chan struct{}, 1)}
	acs.srv = httptest.NewServer(acs)
	defer acs.srv.Close()
	c, err := New(Options{ACSURL: acs.srv.URL, DataModelPath: tr181Path, DisableConnReq: true})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	<-acs.ended
	b.ReportAllocs()
	for b.Loop() {
		acs.enqueue(&cwmp.GetParameterValues{ParameterNames: []string{"Device.DeviceInfo."}})
		c.Wake()
		<-acs.ended
	}
}

// TestCreateInstanceBehindTheACSsBack: a row the CPE creates itself is in
// its data model with the template's values and those given, and counts
// in NumberOfEntries; no session starts for it.
func TestCreateInstanceBehindTheACSsBack(t *testing.T) {
	acs := newTestACS(t)
	c := bootstrapped(t, acs, nil)
	sessions := c.Stats().Sessions
	inst, err := c.CreateInstance("Device.NAT.PortMapping.", map[string]string{"Description": "eval-prof2", "ExternalPort": "7000"})
	if err != nil || inst != "Device.NAT.PortMapping.2." {
		t.Fatalf("create: %q %v", inst, err)
	}
	for p, want := range map[string]string{inst + "Description": "eval-prof2", inst + "ExternalPort": "7000", "Device.NAT.PortMappingNumberOfEntries": "2"} {
		if got, ok := c.Value(p); !ok || got != want {
			t.Fatalf("%s = %q %v, want %q", p, got, ok, want)
		}
	}
	if _, err := c.CreateInstance("Device.NAT.PortMapping.", map[string]string{"Bogus": "1"}); err == nil {
		t.Fatal("created a row with an unknown parameter")
	}
	if _, ok := c.Value("Device.NAT.PortMapping.3.Description"); ok {
		t.Fatal("a refused row is left in the data model")
	}
	if _, err := c.CreateInstance("Device.DeviceInfo.", nil); err == nil {
		t.Fatal("created a row of a single object")
	}
	if got := c.Stats().Sessions; got != sessions {
		t.Fatalf("%d sessions after creating rows, was %d", got, sessions)
	}
}
