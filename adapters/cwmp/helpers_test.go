package cwmp

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/bus/bustest"
	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/netguard"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// env is one test environment: a real embedded NATS, a real ACS on a
// random port, a controller-side responder for work requests (serving the
// batches the test queues) and a recorder of published events.
type env struct {
	t    testing.TB
	bus  *bus.Bus
	acs  *ACS
	url  string
	mu   sync.Mutex
	work [][]*duetv1.Command // batches handed out in order, per request
	reqs []*duetv1.SessionWorkRequest
	evs  []*duetv1.Event
	// failWork makes the controller answer work requests with an error.
	failWork bool
}

func newEnv(t testing.TB, tweak func(*Options)) *env {
	t.Helper()
	b, _ := bustest.Start(t)
	e := &env{t: t, bus: b}
	sub, err := b.Conn().Subscribe(bus.EventPrefix+".>", func(m *nats.Msg) {
		ev := &duetv1.Event{}
		if proto.Unmarshal(m.Data, ev) == nil {
			e.mu.Lock()
			e.evs = append(e.evs, ev)
			e.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	o := Options{Addr: "127.0.0.1:0", Auth: AuthNone, Bus: b, SessionTimeout: 5 * time.Second,
		// The simulated CPEs listen on loopback, which is refused by
		// default (issue 15 §7).
		ConnReqTargets: &netguard.Targets{Allow: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}},
		Logger:         slog.New(slog.NewTextHandler(io.Discard, nil))}
	if tweak != nil {
		tweak(&o)
	}
	if o.Bus != nil {
		ws, err := b.ServeWork("", e.serveWork)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ws.Stop)
	}
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		a.Shutdown(ctx)
	})
	e.acs, e.url = a, "http://"+a.Addr()+"/"
	return e
}

func (e *env) serveWork(_ context.Context, req *duetv1.SessionWorkRequest) (*duetv1.SessionWork, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reqs = append(e.reqs, proto.Clone(req).(*duetv1.SessionWorkRequest))
	if e.failWork {
		return nil, errorf("controller broken")
	}
	if len(e.work) == 0 {
		return &duetv1.SessionWork{}, nil
	}
	b := e.work[0]
	e.work = e.work[1:]
	return &duetv1.SessionWork{Commands: b}, nil
}

// queue adds a batch of commands the controller hands out next.
func (e *env) queue(cmds ...*duetv1.Command) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, c := range cmds {
		if c.Id == "" {
			c.Id = "cmd" + strconv.Itoa(len(e.work)) + "-" + strconv.Itoa(i)
		}
	}
	e.work = append(e.work, cmds)
}

func (e *env) workRequests() []*duetv1.SessionWorkRequest {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*duetv1.SessionWorkRequest(nil), e.reqs...)
}

// waitEvent polls until an event of kind for device satisfies match.
func (e *env) waitEvent(kind, device string, match func(*duetv1.Event) bool) *duetv1.Event {
	e.t.Helper()
	var found *duetv1.Event
	bustest.CheckFor(e.t, 5*time.Second, 5*time.Millisecond, func() error {
		e.mu.Lock()
		defer e.mu.Unlock()
		for _, ev := range e.evs {
			if bus.EventKind(ev) == kind && ev.GetDevice().GetId() == device && (match == nil || match(ev)) {
				found = ev
				return nil
			}
		}
		return errorf("no %s event for %s among %d events", kind, device, len(e.evs))
	})
	return found
}

func (e *env) countEvents(kind, device string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.evs {
		if bus.EventKind(ev) == kind && ev.GetDevice().GetId() == device {
			n++
		}
	}
	return n
}

type strErr string

func (s strErr) Error() string { return string(s) }

func errorf(format string, args ...any) error {
	return strErr(strings.TrimSpace(sprintf(format, args...)))
}

// testCPE drives the ACS over real HTTP with envelopes built by pkg/cwmp.
type testCPE struct {
	t       testing.TB
	url     string
	client  *http.Client
	ns      string
	oui     string
	pc      string
	serial  string
	root    string
	enc     string      // Content-Encoding for requests
	header  http.Header // extra headers on every POST
	dm      *fakeModel
	handled []string // ACS requests seen, by method
	lastEnc string   // Content-Encoding of the last reply
	// user/pass answer a 401 once per POST; basic selects Basic over Digest.
	user, pass string
	basic      bool
}

// newCPE makes a CPE. keepAlive=false opens a new TCP connection per POST
// (docs/cwmp-interop.md #10); jar=false ignores cookies (docs/cwmp-interop.md #9).
func newCPE(t testing.TB, url, root, serial string, keepAlive, jar bool) *testCPE {
	tr := &http.Transport{DisableKeepAlives: !keepAlive, MaxIdleConnsPerHost: 1, DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	if jar {
		c.Jar, _ = cookiejar.New(nil)
	}
	return &testCPE{t: t, url: url, client: c, ns: cwmp.NamespaceCWMP12, oui: "00D09E", pc: "IGW", serial: serial,
		root: root, header: http.Header{}, dm: newFakeModel(root)}
}

func (c *testCPE) id() string { return c.oui + "-" + c.pc + "-" + c.serial }

// post sends msg (nil = empty POST) and returns the response and its
// decoded envelope (nil for an empty body).
func (c *testCPE) post(msg cwmp.Message) (*http.Response, *cwmp.Envelope) {
	c.t.Helper()
	var body []byte
	if msg != nil {
		var err error
		body, err = cwmp.Encode(&cwmp.Envelope{Namespace: c.ns, Header: cwmp.Header{ID: "cpe1"}, Body: msg})
		if err != nil {
			c.t.Fatal(err)
		}
	}
	return c.postRaw(body)
}

func (c *testCPE) postRaw(body []byte) (*http.Response, *cwmp.Envelope) {
	c.t.Helper()
	if c.enc == "gzip" && len(body) > 0 {
		body = gz(body)
	}
	resp, envl := c.postOnce(body, "")
	if resp.StatusCode == http.StatusUnauthorized && c.user != "" {
		resp, envl = c.postOnce(body, c.authorization(resp))
	}
	return resp, envl
}

// authorization answers a challenge, computed independently of the ACS's
// code (RFC 2617 with qop=auth).
func (c *testCPE) authorization(resp *http.Response) string {
	if c.basic {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(c.user+":"+c.pass))
	}
	for _, ch := range resp.Header.Values("WWW-Authenticate") {
		if !strings.HasPrefix(ch, "Digest ") {
			continue
		}
		kv := map[string]string{}
		for _, part := range strings.Split(ch[7:], ", ") {
			k, v, _ := strings.Cut(part, "=")
			kv[k] = strings.Trim(v, `"`)
		}
		h := func(s string) string { x := md5.Sum([]byte(s)); return hex.EncodeToString(x[:]) }
		ha1 := h(c.user + ":" + kv["realm"] + ":" + c.pass)
		ha2 := h("POST:/")
		r := h(ha1 + ":" + kv["nonce"] + ":00000001:abcdef:auth:" + ha2)
		return `Digest username="` + c.user + `", realm="` + kv["realm"] + `", nonce="` + kv["nonce"] +
			`", uri="/", qop=auth, nc=00000001, cnonce="abcdef", response="` + r + `"`
	}
	c.t.Fatalf("no Digest challenge in %v", resp.Header)
	return ""
}

func (c *testCPE) postOnce(body []byte, authz string) (*http.Response, *cwmp.Envelope) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodPost, c.url, bytes.NewReader(body))
	if len(body) > 0 {
		req.Header.Set("Content-Type", `text/xml; charset="utf-8"`)
	}
	if c.enc != "" {
		req.Header.Set("Content-Encoding", c.enc)
	}
	for k, v := range c.header {
		req.Header[k] = v
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Fatalf("POST: %v", err)
	}
	defer resp.Body.Close()
	c.lastEnc = resp.Header.Get("Content-Encoding")
	rb, _ := cwmp.ReadBody(resp.Body, c.lastEnc, 0)
	if resp.StatusCode != http.StatusOK || len(rb) == 0 {
		return resp, nil
	}
	envl, err := cwmp.Decode(rb, resp.Header.Get("Content-Type"))
	if err != nil {
		c.t.Fatalf("decode ACS reply: %v\n%s", err, rb)
	}
	return resp, envl
}

func (c *testCPE) inform(events ...string) *cwmp.Inform {
	inf := &cwmp.Inform{
		DeviceId:     cwmp.DeviceIdStruct{Manufacturer: "Acme", OUI: c.oui, ProductClass: c.pc, SerialNumber: c.serial},
		MaxEnvelopes: 1, CurrentTime: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), RetryCount: 0,
	}
	for _, ev := range events {
		code, key, _ := strings.Cut(ev, "|")
		inf.Event = append(inf.Event, cwmp.EventStruct{EventCode: code, CommandKey: key})
	}
	for _, n := range []string{"DeviceInfo.SoftwareVersion", "DeviceInfo.HardwareVersion", "DeviceInfo.ProvisioningCode",
		"ManagementServer.ParameterKey", "ManagementServer.ConnectionRequestURL"} {
		p := c.root + n
		inf.ParameterList = append(inf.ParameterList, cwmp.ParameterValueStruct{Name: p, Value: cwmp.Value{Type: cwmp.TypeString, Data: c.dm.get(p)}})
	}
	return inf
}

// session runs a whole session: Inform, the CPE's own requests, the empty
// POST, then answers every ACS request from the fake data model until 204.
func (c *testCPE) session(inf *cwmp.Inform, own ...cwmp.Message) {
	c.t.Helper()
	resp, envl := c.post(inf)
	if resp.StatusCode != http.StatusOK || envl == nil {
		c.t.Fatalf("Inform: status %d", resp.StatusCode)
	}
	if ir, ok := envl.Body.(*cwmp.InformResponse); !ok || ir.MaxEnvelopes != 1 || envl.Namespace != c.ns || envl.Header.ID != "cpe1" {
		c.t.Fatalf("Inform answered with %#v ns %q id %q", envl.Body, envl.Namespace, envl.Header.ID)
	}
	for _, m := range own {
		resp, envl = c.post(m)
		if resp.StatusCode != http.StatusOK || envl == nil || envl.Body.MethodName() != m.MethodName()+"Response" {
			c.t.Fatalf("%s: status %d body %#v", m.MethodName(), resp.StatusCode, envl)
		}
	}
	resp, envl = c.post(nil)
	for i := 0; ; i++ {
		if resp.StatusCode == http.StatusNoContent {
			return
		}
		if resp.StatusCode != http.StatusOK || envl == nil || i > 500 {
			c.t.Fatalf("session: status %d after %d requests", resp.StatusCode, i)
		}
		c.handled = append(c.handled, envl.Body.MethodName())
		resp, envl = c.post(c.dm.answer(envl.Body))
	}
}

// fakeModel is the test CPE's data model: enough TR-069 behaviour to
// answer every RPC the ACS sends (TR-069 A.3.2).
type fakeModel struct {
	root   string
	params map[string]cwmp.Value
	next   int
	log    []cwmp.Message
	// faults forces a fault for a method name.
	faults map[string]*cwmp.Fault
}

func newFakeModel(root string) *fakeModel {
	m := &fakeModel{root: root, params: map[string]cwmp.Value{}, next: 3, faults: map[string]*cwmp.Fault{}}
	s := func(p, v string) { m.params[root+p] = cwmp.Value{Type: cwmp.TypeString, Data: v} }
	s("DeviceInfo.SoftwareVersion", "1.0")
	s("DeviceInfo.HardwareVersion", "hw1")
	s("DeviceInfo.ProvisioningCode", "PC1")
	s("ManagementServer.ParameterKey", "")
	s("ManagementServer.ConnectionRequestURL", "http://192.0.2.1:7547/cr")
	s("DeviceInfo.ModelName", "Model")
	m.params[root+"ManagementServer.PeriodicInformInterval"] = cwmp.Value{Type: cwmp.TypeUnsignedInt, Data: "300"}
	s("X.Table.1.Name", "one")
	s("X.Table.2.Name", "two")
	return m
}

func (m *fakeModel) get(p string) string { return m.params[p].Data }

func (m *fakeModel) sorted(prefix string) []string {
	var out []string
	for k := range m.params {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func (m *fakeModel) answer(req cwmp.Message) cwmp.Message {
	m.log = append(m.log, req)
	if f := m.faults[req.MethodName()]; f != nil {
		return f
	}
	switch r := req.(type) {
	case *cwmp.GetParameterNames:
		var out []cwmp.ParameterInfoStruct
		seen := map[string]bool{}
		for _, k := range m.sorted(r.ParameterPath) {
			out = append(out, cwmp.ParameterInfoStruct{Name: k, Writable: true})
			obj := k[:strings.LastIndexByte(k, '.')+1]
			if !seen[obj] {
				seen[obj] = true
				out = append(out, cwmp.ParameterInfoStruct{Name: obj, Writable: true})
			}
		}
		if len(out) == 0 {
			return cwmp.NewFault(cwmp.FaultInvalidParameterName, "")
		}
		return &cwmp.GetParameterNamesResponse{ParameterList: out}
	case *cwmp.GetParameterValues:
		var out []cwmp.ParameterValueStruct
		for _, n := range r.ParameterNames {
			names := []string{n}
			if strings.HasSuffix(n, ".") {
				names = m.sorted(n)
			}
			if _, ok := m.params[n]; !ok && len(names) <= 1 && !strings.HasSuffix(n, ".") || len(names) == 0 {
				return cwmp.NewFault(cwmp.FaultInvalidParameterName, "")
			}
			for _, k := range names {
				out = append(out, cwmp.ParameterValueStruct{Name: k, Value: m.params[k]})
			}
		}
		return &cwmp.GetParameterValuesResponse{ParameterList: out}
	case *cwmp.SetParameterValues:
		var bad []cwmp.SetParameterValuesFault
		for _, p := range r.ParameterList {
			if strings.Contains(p.Name, "ReadOnly") {
				bad = append(bad, cwmp.SetParameterValuesFault{ParameterName: p.Name, FaultCode: cwmp.FaultNotWritable, FaultString: "read only"})
			}
		}
		if len(bad) > 0 {
			f := cwmp.NewFault(cwmp.FaultInvalidArguments, "")
			f.Detail.SetParameterValuesFault = bad
			return f
		}
		for _, p := range r.ParameterList {
			m.params[p.Name] = p.Value
		}
		m.params[m.root+"ManagementServer.ParameterKey"] = cwmp.Value{Type: cwmp.TypeString, Data: r.ParameterKey}
		return &cwmp.SetParameterValuesResponse{Status: 0}
	case *cwmp.AddObject:
		n := m.next
		m.next++
		m.params[r.ObjectName+strconv.Itoa(n)+".Name"] = cwmp.Value{Type: cwmp.TypeString}
		return &cwmp.AddObjectResponse{InstanceNumber: uint32(n)}
	case *cwmp.DeleteObject:
		ks := m.sorted(r.ObjectName)
		if len(ks) == 0 {
			return cwmp.NewFault(cwmp.FaultInvalidParameterName, "")
		}
		for _, k := range ks {
			delete(m.params, k)
		}
		return &cwmp.DeleteObjectResponse{}
	case *cwmp.Reboot:
		return &cwmp.RebootResponse{}
	case *cwmp.FactoryReset:
		return &cwmp.FactoryResetResponse{}
	case *cwmp.Download:
		return &cwmp.DownloadResponse{Status: 1, StartTime: cwmp.UnknownTime, CompleteTime: cwmp.UnknownTime}
	case *cwmp.ScheduleInform:
		return &cwmp.ScheduleInformResponse{}
	case *cwmp.GetRPCMethods:
		return &cwmp.GetRPCMethodsResponse{MethodList: []string{"GetRPCMethods", "Reboot"}}
	case *cwmp.SetParameterAttributes:
		return &cwmp.SetParameterAttributesResponse{}
	case *cwmp.GetParameterAttributes:
		var out []cwmp.ParameterAttributeStruct
		for _, n := range r.ParameterNames {
			out = append(out, cwmp.ParameterAttributeStruct{Name: n, Notification: 2, AccessList: []string{"Subscriber"}})
		}
		return &cwmp.GetParameterAttributesResponse{ParameterList: out}
	}
	return cwmp.NewFault(cwmp.FaultMethodNotSupported, "")
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzipWriter(&buf)
	w.Write(b)
	w.Close()
	return buf.Bytes()
}
