package controller

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"unicode"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// The JSON the API renders of bus messages (events, task results) speaks
// the same vocabulary as the rest of the API: an enum value is its short
// lower-case name, not the protobuf constant. PROTOCOL_CWMP is "cwmp" (as
// a device's protocol), WRITABILITY_READ_ONLY "read_only" (as a cached
// parameter's writable), ERROR_CODE_INVALID_PATH "invalid_path" (as a
// task's error.code). The protobuf bus keeps its enums: integrators decode
// those. This file is the one place the names are made; protoJSON is the
// only way the API renders a protobuf message.

// apiEnumNames overrides the generic rule (strip the enum's prefix, lower
// case) where the API already speaks other names: parameter types are the
// TR-106 names that task requests take and the parameter cache shows
// ("unsignedInt", "dateTime"), so a value read back has the type it is
// written with.
var apiEnumNames = map[protoreflect.FullName]map[string]string{
	(duetv1.ParamType)(0).Descriptor().FullName(): {
		"PARAM_TYPE_UNSPECIFIED":   "unspecified",
		"PARAM_TYPE_STRING":        "string",
		"PARAM_TYPE_INT":           "int",
		"PARAM_TYPE_UNSIGNED_INT":  "unsignedInt",
		"PARAM_TYPE_LONG":          "long",
		"PARAM_TYPE_UNSIGNED_LONG": "unsignedLong",
		"PARAM_TYPE_BOOLEAN":       "boolean",
		"PARAM_TYPE_DATE_TIME":     "dateTime",
		"PARAM_TYPE_BASE64":        "base64",
		"PARAM_TYPE_HEX_BINARY":    "hexBinary",
		"PARAM_TYPE_DECIMAL":       "decimal",
	},
}

// enumPrefix is the UPPER_SNAKE form of an enum's name plus "_", the prefix
// buf's style gives every value: ParamType → "PARAM_TYPE_".
func enumPrefix(ed protoreflect.EnumDescriptor) string {
	var b strings.Builder
	for i, r := range string(ed.Name()) {
		if i > 0 && unicode.IsUpper(r) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String() + "_"
}

// APIEnumName is the API's name of one enum value.
func APIEnumName(ed protoreflect.EnumDescriptor, value string) string {
	if o, ok := apiEnumNames[ed.FullName()]; ok {
		if n, ok := o[value]; ok {
			return n
		}
	}
	return strings.ToLower(strings.TrimPrefix(value, enumPrefix(ed)))
}

// APIEnumValues lists the API's names of an enum's values in number order,
// for the OpenAPI document.
func APIEnumValues(ed protoreflect.EnumDescriptor) []string {
	vs := ed.Values()
	out := make([]string, 0, vs.Len())
	for i := 0; i < vs.Len(); i++ {
		out = append(out, APIEnumName(ed, string(vs.Get(i).Name())))
	}
	return out
}

// enumRenames caches, per enum, protobuf value name → API name.
var enumRenames sync.Map // protoreflect.FullName → map[string]string

func renamesOf(ed protoreflect.EnumDescriptor) map[string]string {
	if m, ok := enumRenames.Load(ed.FullName()); ok {
		return m.(map[string]string)
	}
	m := map[string]string{}
	vs := ed.Values()
	for i := 0; i < vs.Len(); i++ {
		n := string(vs.Get(i).Name())
		m[n] = APIEnumName(ed, n)
	}
	enumRenames.Store(ed.FullName(), m)
	return m
}

var apiProtoJSON = protojson.MarshalOptions{UseProtoNames: true}

// protoJSON renders m as the API's JSON: protojson with the .proto field
// names, every enum value renamed by APIEnumName, whatever the message.
// The output is one line (SSE data needs that).
func protoJSON(m proto.Message) ([]byte, error) {
	raw, err := apiProtoJSON.Marshal(m)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // 64-bit integers and floats pass through unchanged
	var tree any
	if err := dec.Decode(&tree); err != nil {
		return nil, fmt.Errorf("controller: re-reading protojson: %w", err)
	}
	tree = renameMessage(tree, m.ProtoReflect().Descriptor())
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false) // values are device data, not HTML
	if err := enc.Encode(tree); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(out.Bytes(), []byte("\n")), nil
}

// renameMessage walks the protojson form v of a message of type md.
func renameMessage(v any, md protoreflect.MessageDescriptor) any {
	obj, ok := v.(map[string]any)
	if !ok {
		// Well-known types with a JSON form of their own (Timestamp,
		// Duration, wrappers, Struct's values) hold no enum of ours.
		return v
	}
	if md.FullName() == "google.protobuf.Any" {
		if url, ok := obj["@type"].(string); ok {
			if mt, err := protoregistry.GlobalTypes.FindMessageByURL(url); err == nil {
				md = mt.Descriptor()
			}
		}
	}
	fields := md.Fields()
	for k, fv := range obj {
		fd := fields.ByName(protoreflect.Name(k))
		if fd == nil {
			fd = fields.ByJSONName(k)
		}
		if fd == nil {
			continue // "@type", or an Any's embedded well-known "value"
		}
		switch {
		case fd.IsMap():
			if m, ok := fv.(map[string]any); ok {
				for mk, mv := range m {
					m[mk] = renameValue(mv, fd.MapValue())
				}
			}
		case fd.IsList():
			if l, ok := fv.([]any); ok {
				for i, e := range l {
					l[i] = renameValue(e, fd)
				}
			}
		default:
			obj[k] = renameValue(fv, fd)
		}
	}
	return obj
}

// renameValue renames one singular value of field fd.
func renameValue(v any, fd protoreflect.FieldDescriptor) any {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		if s, ok := v.(string); ok {
			if n, ok := renamesOf(fd.Enum())[s]; ok {
				return n
			}
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return renameMessage(v, fd.Message())
	}
	return v
}
