package controller

import (
	"encoding/json"
	"slices"
	"sort"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

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
		if got := writabilityName(w); got != want {
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

// TestOpenAPIListsEnums: openapi.json has a schema per bus enum, named
// like it, listing exactly the names the API renders.
func TestOpenAPIListsEnums(t *testing.T) {
	var doc struct {
		Components struct {
			Schemas map[string]struct {
				Type string   `json:"type"`
				Enum []string `json:"enum"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPIDocument, &doc); err != nil {
		t.Fatal(err)
	}
	for _, ed := range busEnums(t) {
		s, ok := doc.Components.Schemas[string(ed.Name())]
		if !ok {
			t.Errorf("openapi.json has no schema %s", ed.Name())
			continue
		}
		if want := APIEnumValues(ed); s.Type != "string" || !slices.Equal(s.Enum, want) {
			t.Errorf("schema %s: %s %v, want string %v", ed.Name(), s.Type, s.Enum, want)
		}
	}
}
