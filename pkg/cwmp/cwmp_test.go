package cwmp

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

const testdataDir = "../../testdata/cwmp"

// readSample returns a testdata file, inflated when it ends in .gz.
func readSample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdataDir, name))
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(name, ".gz") {
		b, err = ReadBody(bytes.NewReader(b), "gzip", 0)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	return b
}

func samples(t testing.TB) []string {
	t.Helper()
	ents, err := os.ReadDir(testdataDir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	if len(out) < 40 {
		t.Fatalf("only %d samples in %s", len(out), testdataDir)
	}
	return out
}

// normalize rewrites what Encode canonicalises on purpose, so a round trip
// can be compared with DeepEqual: times lose fractions, boolean Values
// become true/false.
func normalize(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			normalize(v.Elem())
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			normalize(v.Index(i))
		}
	case reflect.Struct:
		switch v.Type() {
		case timeType:
			v.Set(reflect.ValueOf(v.Interface().(time.Time).Truncate(time.Second)))
			return
		case valueType:
			val := v.Interface().(Value)
			if val.Type == TypeBoolean {
				val.Data = NormalizeValue(TypeBoolean, val.Data, false)
			}
			v.Set(reflect.ValueOf(val))
			return
		}
		for i := 0; i < v.NumField(); i++ {
			if v.Type().Field(i).IsExported() {
				normalize(v.Field(i))
			}
		}
	}
}

// roundTrip checks decode → encode → decode gives the same envelope.
func roundTrip(t testing.TB, env *Envelope) {
	t.Helper()
	if env.IsEmpty() {
		return
	}
	out, err := Encode(env)
	if err != nil {
		t.Fatalf("encode %s: %v", env.Body.MethodName(), err)
	}
	env2, err := Decode(out, ContentType)
	if err != nil {
		t.Fatalf("re-decode %s: %v\n%s", env.Body.MethodName(), err, out)
	}
	want := *env
	if want.Namespace == "" {
		want.Namespace = DefaultNamespace
	}
	normalize(reflect.ValueOf(&want))
	normalize(reflect.ValueOf(env2))
	if !reflect.DeepEqual(&want, env2) {
		t.Fatalf("round trip differs\nwant %#v\n got %#v\n%s", want.Body, env2.Body, out)
	}
}

func TestSamplesDecodeAndRoundTrip(t *testing.T) {
	seen := map[string]bool{}
	for _, name := range samples(t) {
		t.Run(name, func(t *testing.T) {
			want, _, _ := strings.Cut(name, "__")
			env, err := Decode(readSample(t, name), "")
			if err != nil {
				t.Fatal(err)
			}
			if want == "empty" {
				if !env.IsEmpty() {
					t.Fatalf("want empty, got %T", env.Body)
				}
				return
			}
			if env.Body == nil {
				t.Fatalf("want %s, got empty", want)
			}
			if got := env.Body.MethodName(); got != want {
				t.Fatalf("method %q, want %q", got, want)
			}
			if _, unknown := env.Body.(*UnknownMethod); unknown {
				t.Fatalf("%s decoded as unknown", want)
			}
			seen[want] = true
			roundTrip(t, env)
		})
	}
	// Every message type has at least one real-looking sample.
	for name := range newMessage {
		if !seen[name] {
			t.Errorf("no testdata sample for %s", name)
		}
	}
	if !seen["Fault"] {
		t.Error("no Fault sample")
	}
}

func mustDecode(t *testing.T, name, ct string) *Envelope {
	t.Helper()
	env, err := Decode(readSample(t, name), ct)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return env
}

func TestInformTolerance(t *testing.T) {
	env := mustDecode(t, "Inform__easycwmp_noheader_cwmp14_whitespace.xml", "text/xml")
	if env.Namespace != "urn:dslforum-org:cwmp-1-4" || env.Header.ID != "" {
		t.Fatalf("namespace %q id %q", env.Namespace, env.Header.ID)
	}
	in := env.Body.(*Inform)
	if in.DeviceId.OUI != "00d09e" || in.DeviceId.SerialNumber != "EASY-0001" || in.DeviceId.ProductClass != "" {
		t.Fatalf("device id %+v", in.DeviceId)
	}
	if len(in.Event) != 2 || in.Event[0].EventCode != EventConnectionRequest || in.Event[1].EventCode != EventValueChange {
		t.Fatalf("events %+v (arrayType said 9)", in.Event)
	}
	if !in.CurrentTime.Equal(time.Date(2024, 3, 5, 10, 11, 12, 0, time.UTC)) {
		t.Fatalf("zone-less time %v", in.CurrentTime)
	}
	want := []ParameterValueStruct{
		{"Device.DeviceInfo.SoftwareVersion", Value{TypeString, "  1.2.3  "}},
		{"Device.WiFi.Radio.1.Enable", Value{TypeBoolean, "TRUE"}},
		{"Device.DeviceInfo.UpTime", Value{TypeUnsignedInt, "3600"}},
		{"Device.ManagementServer.ParameterKey", Value{TypeString, ""}},
		{"Device.X_VENDOR.Blob", Value{TypeBase64, "aGVsbG8="}},
	}
	if !reflect.DeepEqual(in.ParameterList, want) {
		t.Fatalf("params\n got %#v\nwant %#v", in.ParameterList, want)
	}
	if in.RetryCount != 0 {
		t.Fatal("missing RetryCount must default to 0")
	}
}

func TestInformVendorVariants(t *testing.T) {
	env := mustDecode(t, "Inform__technicolor_cwmp12_sessiontimeout.xml", "")
	if env.Header.SessionTimeout != 60 || env.Header.SupportedCWMPVersions != "1.0,1.1,1.2,1.3,1.4" ||
		env.Header.ID != "ID:intrnl.unset.id.Inform1700000000" || env.Namespace != NamespaceCWMP12 {
		t.Fatalf("header %+v ns %q", env.Header, env.Namespace)
	}
	in := env.Body.(*Inform)
	if in.CurrentTime.Nanosecond() != 345e6 || in.RetryCount != 2 || len(in.ParameterList) != 6 {
		t.Fatalf("inform %+v", in)
	}

	env = mustDecode(t, "Inform__huawei_cdata_cwmp13.xml", "")
	in = env.Body.(*Inform)
	if in.DeviceId.Manufacturer != "Huawei Technologies Co., Ltd" || in.DeviceId.SerialNumber != "4857544312345678" {
		t.Fatalf("CDATA device id %+v", in.DeviceId)
	}
	if in.ParameterList[0].Value.Data != "<b>ONT</b> & more" {
		t.Fatalf("CDATA value %q", in.ParameterList[0].Value.Data)
	}
	if !in.CurrentTime.Equal(UnknownTime) {
		t.Fatalf("invalid dateTime must become 0001-01-01, got %v", in.CurrentTime)
	}
	if in.Event[1].CommandKey != "reboot-42" || env.Namespace != "urn:dslforum-org:cwmp-1-3" {
		t.Fatalf("events %+v ns %s", in.Event, env.Namespace)
	}
}

func TestCharsets(t *testing.T) {
	env := mustDecode(t, "Inform__latin1_decl.xml", "text/xml")
	if got := env.Body.(*Inform).DeviceId.Manufacturer; got != "Télécom Électronique" {
		t.Fatalf("latin1 via declaration: %q", got)
	}
	env = mustDecode(t, "Inform__utf16.xml", "")
	if got := env.Body.(*Inform).DeviceId.Manufacturer; got != "Technicolor" {
		t.Fatalf("utf-16: %q", got)
	}
	// Content-Type wins over a missing declaration; quoted and unquoted.
	body := []byte("<Envelope xmlns='http://schemas.xmlsoap.org/soap/envelope/' xmlns:c='urn:dslforum-org:cwmp-1-0'><Body><c:Kicked><Command>caf\xe9</Command></c:Kicked></Body></Envelope>")
	for _, ct := range []string{`text/xml; charset="ISO-8859-1"`, `text/xml;charset=latin1`, `text/xml; charset=iso-8859-1; foo`} {
		env, err := Decode(body, ct)
		if err != nil {
			t.Fatalf("%s: %v", ct, err)
		}
		if got := env.Body.(*Kicked).Command; got != "café" {
			t.Fatalf("%s: %q", ct, got)
		}
	}
	// The same bytes as UTF-8 are invalid.
	if _, err := Decode(body, "text/xml; charset=utf-8"); err == nil {
		t.Fatal("invalid UTF-8 accepted")
	}
	if _, err := Decode(body, "text/xml; charset=koi8-r"); !errors.Is(err, ErrUnsupportedCharset) {
		t.Fatalf("unknown charset: %v", err)
	}
}

func TestEmptyVariants(t *testing.T) {
	for _, body := range []string{
		"", " ", "\r\n\t",
		`<?xml version="1.0"?>`,
		`<?xml version="1.0"?><!-- nothing --> `,
		`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"/>`,
		`<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/><s:Body> </s:Body></s:Envelope>`,
	} {
		env, err := Decode([]byte(body), "")
		if err != nil || !env.IsEmpty() {
			t.Fatalf("%q: env %+v err %v", body, env, err)
		}
	}
}

func wrap(ns, body string) []byte {
	return []byte(`<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" xmlns:cwmp="` + ns + `" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soap:Body>` + body + `</soap:Body></soap:Envelope>`)
}

func TestDecodeTable(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		wantErr string
		check   func(t *testing.T, m Message)
	}{
		{"missing OUI", `<cwmp:Inform><DeviceId><SerialNumber>1</SerialNumber></DeviceId></cwmp:Inform>`, "OUI", nil},
		{"empty serial", `<cwmp:Inform><DeviceId><OUI>001122</OUI><SerialNumber> </SerialNumber></DeviceId></cwmp:Inform>`, "SerialNumber", nil},
		{"missing DeviceId", `<cwmp:Inform></cwmp:Inform>`, "DeviceId", nil},
		{"non-numeric instance", `<cwmp:AddObjectResponse><InstanceNumber>abc</InstanceNumber></cwmp:AddObjectResponse>`, "InstanceNumber", nil},
		{"missing instance", `<cwmp:AddObjectResponse><Status>0</Status></cwmp:AddObjectResponse>`, "InstanceNumber", nil},
		{"bad boolean", `<cwmp:GetParameterNames><NextLevel>yes</NextLevel></cwmp:GetParameterNames>`, "boolean", nil},
		{"unknown method", `<cwmp:X_ACME_Frobnicate><A>1</A></cwmp:X_ACME_Frobnicate>`, "", func(t *testing.T, m Message) {
			if u, ok := m.(*UnknownMethod); !ok || u.Name != "X_ACME_Frobnicate" {
				t.Fatalf("%#v", m)
			}
		}},
		{"instance with spaces", `<cwmp:AddObjectResponse><InstanceNumber> 7 </InstanceNumber></cwmp:AddObjectResponse>`, "", func(t *testing.T, m Message) {
			if r := m.(*AddObjectResponse); r.InstanceNumber != 7 || r.Status != 0 {
				t.Fatalf("%+v", r)
			}
		}},
		{"booleans all forms", `<cwmp:GetParameterNamesResponse><ParameterList><a><Name>A</Name><Writable>TRUE</Writable></a><a><Name>B</Name><Writable>False</Writable></a><a><Name>C</Name><Writable>1</Writable></a><a><Name>D</Name><Writable/></a></ParameterList></cwmp:GetParameterNamesResponse>`, "", func(t *testing.T, m Message) {
			l := m.(*GetParameterNamesResponse).ParameterList
			if len(l) != 4 || !l[0].Writable || l[1].Writable || !l[2].Writable || l[3].Writable {
				t.Fatalf("%+v", l)
			}
		}},
		{"nonstandard xsi types", `<cwmp:GetParameterValuesResponse><ParameterList><p><Name>a</Name><Value xsi:type="xsd:base64Binary">AA==</Value></p><p><Name>b</Name><Value xsi:type="soap-enc:base64">AA==</Value></p><p><Name>c</Name><Value xsi:type="unsignedInt"> 5 </Value></p><p><Name>d</Name><Value xsi:type="xsd:X_ODD"> x </Value></p></ParameterList></cwmp:GetParameterValuesResponse>`, "", func(t *testing.T, m Message) {
			l := m.(*GetParameterValuesResponse).ParameterList
			want := []Value{{TypeBase64, "AA=="}, {TypeBase64, "AA=="}, {TypeUnsignedInt, "5"}, {TypeString, " x "}}
			for i, w := range want {
				if l[i].Value != w {
					t.Fatalf("%d: %+v want %+v", i, l[i].Value, w)
				}
			}
		}},
		{"missing optional times", `<cwmp:TransferComplete><CommandKey>k</CommandKey><StartTime>garbage</StartTime></cwmp:TransferComplete>`, "", func(t *testing.T, m Message) {
			tc := m.(*TransferComplete)
			if !tc.StartTime.Equal(UnknownTime) || !tc.CompleteTime.Equal(UnknownTime) || tc.FaultStruct.FaultCode != 0 {
				t.Fatalf("%+v", tc)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env, err := Decode(wrap(NamespaceCWMP10, tt.body), "")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one mentioning %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, env.Body)
		})
	}
}

func TestFaultDecode(t *testing.T) {
	env := mustDecode(t, "Fault__spv_9003.xml", "")
	f := env.Body.(*Fault)
	if f.SOAPCode != "Client" || f.Detail.FaultCode != 9003 || len(f.Detail.SetParameterValuesFault) != 2 {
		t.Fatalf("%+v", f)
	}
	de := f.Err()
	if de.Code != devicemodel.CodeInvalidArgument || de.DeviceFault != 9003 || len(de.Params) != 2 ||
		de.Params[0].Code != devicemodel.CodeInvalidValue || de.Params[1].Code != devicemodel.CodeNotWritable ||
		de.Params[1].Path != "InternetGatewayDevice.DeviceInfo.SerialNumber" {
		t.Fatalf("%+v", de)
	}
	env = mustDecode(t, "Fault__9000_prefixed_faultcode.xml", "")
	if f := env.Body.(*Fault); f.SOAPCode != "Server" || f.Err().Code != devicemodel.CodeUnsupported {
		t.Fatalf("%+v", f)
	}
	// FaultFromError keeps the parameter faults.
	f2 := FaultFromError(de)
	if f2.Detail.FaultCode != 9003 || len(f2.Detail.SetParameterValuesFault) != 2 || f2.SOAPCode != "Client" {
		t.Fatalf("%+v", f2)
	}
	if f3 := FaultFromError(errors.New("boom")); f3.Detail.FaultCode != 9002 {
		t.Fatalf("%+v", f3)
	}
}

func TestFaultTables(t *testing.T) {
	for c := uint32(8000); c <= 8006; c++ {
		if _, ok := Faults[c]; !ok {
			t.Errorf("missing ACS fault %d", c)
		}
	}
	for c := uint32(9000); c <= 9032; c++ {
		if _, ok := Faults[c]; !ok {
			t.Errorf("missing CPE fault %d", c)
		}
	}
	checks := map[uint32]devicemodel.Code{
		0: devicemodel.CodeUnspecified, 9000: devicemodel.CodeUnsupported, 9001: devicemodel.CodeDenied,
		9004: devicemodel.CodeResourcesExceeded, 9005: devicemodel.CodeInvalidPath, 9006: devicemodel.CodeInvalidType,
		9007: devicemodel.CodeInvalidValue, 9008: devicemodel.CodeNotWritable, 9009: devicemodel.CodeNotificationDenied,
		9010: devicemodel.CodeTransferFailed, 9015: devicemodel.CodeTransferFailed, 9020: devicemodel.CodeTransferFailed,
		9021: devicemodel.CodeConflict, 8000: devicemodel.CodeUnsupported, 9850: devicemodel.CodeInternal,
	}
	for f, want := range checks {
		if got := FaultToCode(f); got != want {
			t.Errorf("FaultToCode(%d) = %v, want %v", f, got, want)
		}
	}
	// CodeToFault inverts FaultToCode for every code that has a 9xxx home.
	for _, c := range []devicemodel.Code{devicemodel.CodeUnsupported, devicemodel.CodeDenied, devicemodel.CodeInternal,
		devicemodel.CodeInvalidArgument, devicemodel.CodeResourcesExceeded, devicemodel.CodeInvalidPath,
		devicemodel.CodeInvalidType, devicemodel.CodeInvalidValue, devicemodel.CodeNotWritable,
		devicemodel.CodeNotificationDenied, devicemodel.CodeTransferFailed, devicemodel.CodeConflict} {
		if got := FaultToCode(CodeToFault(c)); got != c {
			t.Errorf("FaultToCode(CodeToFault(%v)) = %v", c, got)
		}
	}
	if CodeToFault(devicemodel.CodeTimeout) != 9002 || CodeToFault(devicemodel.CodeObjectNotCreatable) != 9005 {
		t.Error("fallback mappings")
	}
	if FaultSOAPCode(9005) != "Client" || FaultSOAPCode(9010) != "Server" || FaultSOAPCode(9900) != "Server" {
		t.Error("SOAP fault codes")
	}
}

func TestEncodeShape(t *testing.T) {
	env := &Envelope{Namespace: "urn:dslforum-org:cwmp-1-4", Header: Header{ID: "a<b"}, Body: &Download{CommandKey: "k"}}
	out, err := Encode(env)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	for _, want := range []string{
		`xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"`, `xmlns:soap-enc=`, `xmlns:xsd=`, `xmlns:xsi=`,
		`xmlns:cwmp="urn:dslforum-org:cwmp-1-4"`, `<cwmp:ID soap-env:mustUnderstand="1">a&lt;b</cwmp:ID>`,
		`<cwmp:Download><CommandKey>k</CommandKey><FileType></FileType><URL></URL><Username></Username><Password></Password><FileSize>0</FileSize><TargetFileName></TargetFileName><DelaySeconds>0</DelaySeconds><SuccessURL></SuccessURL><FailureURL></FailureURL></cwmp:Download>`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %s in\n%s", want, s)
		}
	}
	ts := time.Date(2024, 3, 5, 10, 11, 12, 987654321, time.UTC)
	env = &Envelope{Header: Header{ID: "1", HoldRequests: true}, Body: &SetParameterValues{
		ParameterList: []ParameterValueStruct{{"A.B", Value{TypeBoolean, "TRUE"}}, {"A.C", Value{TypeDateTime, "x"}}},
		ParameterKey:  "pk"}}
	out, _ = Encoder{NumericBooleans: true}.Encode(env)
	s = string(out)
	for _, want := range []string{`xmlns:cwmp="urn:dslforum-org:cwmp-1-0"`, `<cwmp:HoldRequests soap-env:mustUnderstand="1">1</cwmp:HoldRequests>`,
		`<ParameterList soap-enc:arrayType="cwmp:ParameterValueStruct[2]"><ParameterValueStruct><Name>A.B</Name><Value xsi:type="xsd:boolean">1</Value>`,
		`<Value xsi:type="xsd:dateTime">x</Value>`} {
		if !strings.Contains(s, want) {
			t.Errorf("missing %s in\n%s", want, s)
		}
	}
	out, _ = Encode(&Envelope{Body: &TransferComplete{StartTime: ts, CompleteTime: ts.In(time.FixedZone("", 3600))}})
	if s = string(out); !strings.Contains(s, "<StartTime>2024-03-05T10:11:12Z</StartTime>") ||
		!strings.Contains(s, "<CompleteTime>2024-03-05T11:11:12+01:00</CompleteTime>") ||
		!strings.Contains(s, "<FaultStruct><FaultCode>0</FaultCode><FaultString></FaultString></FaultStruct>") {
		t.Errorf("dateTime form:\n%s", s)
	}
	out, _ = Encode(&Envelope{Body: &GetRPCMethodsResponse{MethodList: []string{"Inform"}}})
	if !strings.Contains(string(out), `<MethodList soap-enc:arrayType="xsd:string[1]"><string>Inform</string></MethodList>`) {
		t.Errorf("string array:\n%s", out)
	}
	out, _ = Encode(&Envelope{Body: NewFault(9005, "")})
	if !strings.Contains(string(out), `<soap-env:Fault><faultcode>Client</faultcode><faultstring>CWMP fault</faultstring><detail><cwmp:Fault><FaultCode>9005</FaultCode><FaultString>Invalid parameter name</FaultString></cwmp:Fault></detail></soap-env:Fault>`) {
		t.Errorf("fault:\n%s", out)
	}
	if _, err := Encode(&Envelope{}); !errors.Is(err, ErrEmptyBody) {
		t.Fatalf("empty: %v", err)
	}
}

func TestRoundTripConstructed(t *testing.T) {
	ts := time.Date(2024, 3, 5, 10, 11, 12, 0, time.UTC)
	msgs := []Message{
		&Inform{DeviceId: DeviceIdStruct{"M & Co", "001122", "PC", "SN1"}, Event: []EventStruct{{EventBootstrap, ""}, {EventMReboot, "k"}},
			MaxEnvelopes: 1, CurrentTime: ts, RetryCount: 3, ParameterList: []ParameterValueStruct{{"Device.X", Value{TypeString, " sp\r\nace "}}}},
		&ChangeDUState{Operations: []DUOperation{{Kind: DUInstall, URL: "u", ExecutionEnvRef: "ee"}, {Kind: DUUpdate, UUID: "x", Version: "2"}, {Kind: DUUninstall, UUID: "y"}}, CommandKey: "c"},
		&ScheduleDownload{CommandKey: "c", TimeWindowList: []TimeWindowStruct{{0, 10, "2 Immediately", " hi ", -1}}},
		&SetParameterAttributes{ParameterList: []SetParameterAttributesStruct{{"A.", true, 2, true, []string{"Subscriber"}}}},
		&Fault{SOAPCode: "Client", SOAPString: "CWMP fault", Detail: CWMPFault{9003, "x", []SetParameterValuesFault{{"A.B", 9007, "bad"}}}},
		&GetOptionsResponse{OptionList: []OptionStruct{{"O", "1", 2, 1, ts, ts, true}}},
	}
	for _, m := range msgs {
		roundTrip(t, &Envelope{Namespace: NamespaceCWMP12, Header: Header{ID: "x", SessionTimeout: 30, UseCWMPVersion: "1.4"}, Body: m})
	}
}

func TestHostile(t *testing.T) {
	laughs := `<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]><Envelope><Body>&lol2;</Body></Envelope>`
	xxe := `<?xml version="1.0"?><!DOCTYPE foo [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><Envelope><Body>&xxe;</Body></Envelope>`
	deep := strings.Repeat("<a>", 100000) + strings.Repeat("</a>", 100000)
	many := "<Envelope><Body><cwmp:GetParameterValues xmlns:cwmp='urn:dslforum-org:cwmp-1-0'><ParameterNames>" +
		strings.Repeat("<string>x</string>", 5000) + "</ParameterNames></cwmp:GetParameterValues></Body></Envelope>"
	// Few elements, many attributes: each attribute is memory the decoder
	// keeps, so it counts against MaxElements (issue 15 §8; before, this
	// passed a 1000-element limit).
	var attrs strings.Builder
	for i := 0; i < 5000; i++ {
		fmt.Fprintf(&attrs, " a%d='x'", i)
	}
	attrHeavy := "<Envelope><Body><x" + attrs.String() + "/></Body></Envelope>"
	full := string(readSample(t, "Inform__zyxel_soapenv_10.xml"))
	tests := []struct {
		name   string
		body   string
		limits Limits
		want   error
	}{
		{"billion laughs", laughs, Limits{}, ErrDTD},
		{"external entity", xxe, Limits{}, ErrDTD},
		{"deep nesting", deep, Limits{}, ErrTooDeep},
		{"too many elements", many, Limits{MaxElements: 1000}, ErrTooManyElements},
		{"too many attributes", attrHeavy, Limits{MaxElements: 1000}, ErrTooManyElements},
		{"oversized", full, Limits{MaxBodySize: 100}, ErrBodyTooLarge},
		{"truncated", full[:len(full)/2], Limits{}, ErrMalformed},
		{"undefined entity", `<Envelope><Body>&lol;</Body></Envelope>`, Limits{}, ErrMalformed},
		{"not an envelope", `<html><body/></html>`, Limits{}, ErrMalformed},
		{"garbage", "\x00\x01\x02", Limits{}, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.limits.Decode([]byte(tt.body), "")
			if !errors.Is(err, tt.want) {
				t.Fatalf("err %v, want %v", err, tt.want)
			}
		})
	}
	// The same many-element body is fine under the default limits.
	if _, err := Decode([]byte(many), ""); err != nil {
		t.Fatal(err)
	}
}

func TestReadBody(t *testing.T) {
	plain := readSample(t, "Inform__zyxel_soapenv_10.xml")
	var gz, zl, raw bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(plain)
	gw.Close()
	zw := zlib.NewWriter(&zl)
	zw.Write(plain)
	zw.Close()
	fw, _ := flate.NewWriter(&raw, flate.BestCompression)
	fw.Write(plain)
	fw.Close()
	for enc, in := range map[string][]byte{"": plain, "identity": plain, "gzip": gz.Bytes(), "x-gzip": gz.Bytes(), "deflate": zl.Bytes(), "Deflate ": raw.Bytes()} {
		got, err := ReadBody(bytes.NewReader(in), enc, 0)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("%q: %v", enc, err)
		}
	}
	for _, enc := range []string{"", "gzip", "deflate"} {
		if got, err := ReadBody(bytes.NewReader(nil), enc, 0); err != nil || len(got) != 0 {
			t.Fatalf("empty %q body: %q %v", enc, got, err)
		}
	}
	if _, err := ReadBody(bytes.NewReader(nil), "br", 0); !errors.Is(err, ErrUnsupportedEncoding) {
		t.Fatalf("empty br: %v", err)
	}
	if _, err := ReadBody(bytes.NewReader(plain), "br", 0); !errors.Is(err, ErrUnsupportedEncoding) {
		t.Fatalf("br: %v", err)
	}
	if _, err := ReadBody(bytes.NewReader(plain), "", 100); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("plain over limit: %v", err)
	}
	// A gzip bomb: 64 MiB of zeros compresses to ~64 KiB; reading stops at the limit.
	var bomb bytes.Buffer
	bw, _ := gzip.NewWriterLevel(&bomb, gzip.BestCompression)
	zeros := make([]byte, 1<<20)
	for i := 0; i < 64; i++ {
		bw.Write(zeros)
	}
	bw.Close()
	if _, err := ReadBody(bytes.NewReader(bomb.Bytes()), "gzip", 4<<20); !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("gzip bomb: %v", err)
	}
	if _, err := ReadBody(bytes.NewReader([]byte("not gzip")), "gzip", 0); !errors.Is(err, ErrMalformed) {
		t.Fatalf("bad gzip: %v", err)
	}
	if _, err := ReadBody(bytes.NewReader(gz.Bytes()[:gz.Len()/2]), "gzip", 0); err == nil {
		t.Fatal("truncated gzip accepted")
	}
}

func TestValueHelpers(t *testing.T) {
	for _, s := range []string{"1", "0", "true", "FALSE", " True "} {
		if _, err := ParseBool(s); err != nil {
			t.Errorf("ParseBool(%q): %v", s, err)
		}
	}
	if _, err := ParseBool("yes"); err == nil {
		t.Error("ParseBool(yes)")
	}
	for _, s := range []string{"2024-03-05T10:11:12Z", "2024-03-05T10:11:12.5+02:00", "2024-03-05T10:11:12", "2024-03-05T10:11:12.123", "0001-01-01T00:00:00Z"} {
		if _, ok := ParseDateTime(s); !ok {
			t.Errorf("ParseDateTime(%q)", s)
		}
	}
	if tm, ok := ParseDateTime("2024-13-45"); ok || !tm.Equal(UnknownTime) {
		t.Error("invalid dateTime")
	}
	if FormatDateTime(time.Time{}) != "0001-01-01T00:00:00Z" || FormatDateTime(time.Date(2024, 1, 2, 3, 4, 5, 6e8, time.UTC)) != "2024-01-02T03:04:05Z" {
		t.Error("FormatDateTime")
	}
	bad := map[ValueType]string{TypeInt: "x", TypeUnsignedInt: "-1", TypeBoolean: "2", TypeDateTime: "soon", TypeBase64: "!!", TypeHexBinary: "zz", TypeLong: "1.5", TypeUnsignedLong: "-3"}
	for ty, v := range bad {
		if ValidateValue(ty, v) == nil {
			t.Errorf("ValidateValue(%s, %q) accepted", ty, v)
		}
	}
	good := map[ValueType]string{TypeInt: "-5", TypeUnsignedInt: " 7 ", TypeBoolean: "1", TypeDateTime: "2024-01-01T00:00:00Z", TypeBase64: "AA==", TypeHexBinary: "00ff", TypeString: "anything"}
	for ty, v := range good {
		if err := ValidateValue(ty, v); err != nil {
			t.Errorf("ValidateValue(%s, %q): %v", ty, v, err)
		}
	}
	if ParseValueType("") != TypeString || ParseValueType("xsd:base64Binary") != TypeBase64 || ParseValueType("soap-enc:base64") != TypeBase64 || ParseValueType("boolean") != TypeBoolean {
		t.Error("ParseValueType")
	}
	if !IsCWMPNamespace("urn:dslforum-org:cwmp-1-4") || IsCWMPNamespace("urn:dslforum-org:cwmp-1-") || IsCWMPNamespace("urn:other") {
		t.Error("IsCWMPNamespace")
	}
}

func FuzzDecode(f *testing.F) {
	ents, err := os.ReadDir(testdataDir)
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(testdataDir, e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "")
		f.Add(b, `text/xml; charset="ISO-8859-1"`)
	}
	f.Fuzz(func(t *testing.T, body []byte, ct string) {
		env, err := Decode(body, ct)
		if err != nil {
			return
		}
		if env.IsEmpty() {
			return
		}
		// Whatever decodes must encode, and decode again to the same value.
		if u, ok := env.Body.(*UnknownMethod); ok {
			if _, err := Encode(&Envelope{Body: u}); err != nil {
				t.Fatal(err)
			}
			return
		}
		roundTrip(t, env)
	})
}

func BenchmarkDecodeInform(b *testing.B) {
	body := readSample(b, "Inform__zyxel_soapenv_10.xml")
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := Decode(body, ContentType); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkEncodeGetParameterValues(b *testing.B) {
	env := &Envelope{Namespace: NamespaceCWMP10, Header: Header{ID: "42"}, Body: &GetParameterValues{
		ParameterNames: []string{"Device.DeviceInfo.", "Device.ManagementServer.", "Device.WiFi.SSID.1.SSID", "Device.IP.Interface.1.IPv4Address.1.IPAddress"}}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(env); err != nil {
			b.Fatal(err)
		}
	}
}
