package controller

import (
	"encoding/json"
	"slices"
	"sort"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// busEnums are the enums of the bus schema (package duet.v1).
func busEnums(t *testing.T) []protoreflect.EnumDescriptor {
	t.Helper()
	var out []protoreflect.EnumDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("duet.v1", func(f protoreflect.FileDescriptor) bool {
		for i := 0; i < f.Enums().Len(); i++ {
			out = append(out, f.Enums().Get(i))
		}
		return true
	})
	if len(out) < 4 {
		t.Fatalf("only %d duet.v1 enums registered", len(out))
	}
	return out
}

// TestAPIEnumNamesMatchTheRESTNames: the names protoJSON gives enum values
// are the ones the rest of the API already uses: error codes as
// devicemodel.Code, protocols as devicemodel.Protocol, parameter types as
// task requests take them, writability as the parameter cache shows it.
func TestAPIEnumNamesMatchTheRESTNames(t *testing.T) {
	for n, name := range duetv1.ErrorCode_name {
		v := duetv1.ErrorCode(n)
		if got, want := APIEnumName(v.Descriptor(), name), devicemodel.Code(n).String(); got != want {
			t.Errorf("%s: %q, devicemodel says %q", name, got, want)
		}
	}
	for n, name := range duetv1.Protocol_name {
		if n == 0 {
			continue
		}
		got := APIEnumName(duetv1.Protocol(n).Descriptor(), name)
		if p, err := devicemodel.ParseProtocol(got); err != nil || string(p) != got {
			t.Errorf("%s: %q is not a devicemodel protocol (%v)", name, got, err)
		}
	}
	var types []string
	for n, name := range duetv1.ParamType_name {
		if n != 0 {
			types = append(types, APIEnumName(duetv1.ParamType(n).Descriptor(), name))
		}
	}
	var accepted []string
	for k := range paramTypes {
		if k != "" {
			accepted = append(accepted, k)
		}
	}
	sort.Strings(types)
	sort.Strings(accepted)
	if !slices.Equal(types, accepted) {
		t.Errorf("parameter types rendered %v, accepted in task requests %v", types, accepted)
	}
	for w, want := range map[int16]string{0: "unknown", 1: "read_only", 2: "read_write", 3: "write_only"} {
		if got := WritabilityName(w); got != want {
			t.Errorf("writability %d: %q, want %q", w, got, want)
		}
	}
	// Every name is distinct within its enum and free of the constant form.
	for _, ed := range busEnums(t) {
		seen := map[string]bool{}
		for _, n := range APIEnumValues(ed) {
			if seen[n] || n == "" {
				t.Errorf("%s: name %q twice or empty", ed.FullName(), n)
			}
			seen[n] = true
		}
	}
}

// BenchmarkProtoJSONInform: the cost of the renaming on an Inform event of
// 20 parameters, against plain protojson (what the stream paid before).
func BenchmarkProtoJSONInform(b *testing.B) {
	ev := &duetv1.Event{Id: "e1", Device: &duetv1.DeviceIdentity{Id: "00D09E-ONT-1", Protocol: duetv1.Protocol_PROTOCOL_CWMP},
		Kind: &duetv1.Event_Inform{Inform: &duetv1.Inform{}}}
	for i := 0; i < 20; i++ {
		ev.GetInform().Params = append(ev.GetInform().Params, &duetv1.Parameter{Path: "Device.DeviceInfo.X" + string(rune('A'+i)),
			Value: "value", Type: duetv1.ParamType_PARAM_TYPE_UNSIGNED_INT, Writable: duetv1.Writability_WRITABILITY_READ_ONLY})
	}
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := apiProtoJSON.Marshal(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protoJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ProtoJSON(ev); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestProtoJSONRewrite: field order, escapes, well-known types and nesting
// survive the rewrite; only enum fields change.
func TestProtoJSONRewrite(t *testing.T) {
	for _, c := range []struct {
		m    proto.Message
		want string
	}{
		{&duetv1.Parameter{Path: "Device.X", Value: `a "PARAM_TYPE_INT" \ é <b>`, Type: duetv1.ParamType_PARAM_TYPE_UNSIGNED_INT, Writable: duetv1.Writability_WRITABILITY_READ_ONLY},
			`{"path":"Device.X","value":"a \"PARAM_TYPE_INT\" \\ é <b>","type":"unsignedInt","writable":"read_only"}`},
		{&duetv1.CommandResult{CommandId: "c", Error: &duetv1.Error{Code: duetv1.ErrorCode_ERROR_CODE_INVALID_PATH, DeviceFault: 9005,
			Params: []*duetv1.ParamError{{Path: "A.", Code: duetv1.ErrorCode_ERROR_CODE_NOT_WRITABLE}, {Path: "B.", Code: duetv1.ErrorCode_ERROR_CODE_UNSPECIFIED}}}},
			`{"command_id":"c","error":{"code":"invalid_path","device_fault":9005,"params":[{"path":"A.","code":"not_writable"},{"path":"B."}]}}`},
		{&duetv1.Event{Id: "e", Time: timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
			Device: &duetv1.DeviceIdentity{Id: "d", Protocol: duetv1.Protocol_PROTOCOL_USP}, Kind: &duetv1.Event_Online{Online: &duetv1.Online{}}},
			`{"id":"e","time":"2026-01-02T03:04:05Z","device":{"id":"d","protocol":"usp"},"online":{}}`},
	} {
		got, err := ProtoJSON(c.m)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != c.want {
			t.Errorf("%T:\n got %s\nwant %s", c.m, got, c.want)
		}
	}
}

// FuzzProtoJSON: whatever event comes off the bus, its API JSON is valid
// JSON and holds no enum constant of ours in an enum field.
func FuzzProtoJSON(f *testing.F) {
	for _, m := range []proto.Message{
		&duetv1.Event{Id: "e", Device: &duetv1.DeviceIdentity{Id: "d", Protocol: duetv1.Protocol_PROTOCOL_CWMP},
			Kind: &duetv1.Event_Inform{Inform: &duetv1.Inform{Params: []*duetv1.Parameter{{Path: "A", Value: "\"x\"", Type: duetv1.ParamType_PARAM_TYPE_BOOLEAN}}}}},
		&duetv1.Event{Kind: &duetv1.Event_CommandResult{CommandResult: &duetv1.CommandResult{Error: &duetv1.Error{Code: duetv1.ErrorCode_ERROR_CODE_TIMEOUT}}}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		ev := &duetv1.Event{}
		if proto.Unmarshal(b, ev) != nil {
			return
		}
		out, err := ProtoJSON(ev)
		if err != nil {
			if _, perr := apiProtoJSON.Marshal(ev); perr != nil {
				return // protojson refuses it too (invalid UTF-8)
			}
			t.Fatalf("%v for %v", err, ev)
		}
		if !json.Valid(out) {
			t.Fatalf("invalid JSON %s", out)
		}
	})
}
