package controller

import (
	"errors"
	"fmt"
	"strconv"
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

// ProtoJSON renders m as the API's JSON: protojson with the .proto field
// names, every enum value renamed by APIEnumName, whatever the message.
// It rewrites protojson's output in one pass, guided by the message
// descriptor, so field order stays and the output is one line (SSE data
// needs that).
func ProtoJSON(m proto.Message) ([]byte, error) {
	raw, err := apiProtoJSON.Marshal(m)
	if err != nil {
		return nil, err
	}
	w := enumRewriter{src: raw, out: make([]byte, 0, len(raw))}
	if err := w.value(shape{msg: m.ProtoReflect().Descriptor()}); err != nil {
		return nil, fmt.Errorf("controller: rewriting protojson of %s: %w", m.ProtoReflect().Descriptor().FullName(), err)
	}
	if w.skipSpace(); w.pos != len(w.src) {
		return nil, fmt.Errorf("controller: rewriting protojson: data after the value")
	}
	return w.out, nil
}

// shape says what a JSON value is in protojson terms: a message, an enum
// value, a map or a list of shapes, or (zero) anything else, copied as is.
type shape struct {
	msg   protoreflect.MessageDescriptor
	enum  protoreflect.EnumDescriptor
	elem  *shape // a list's elements, or a map's values
	isMap bool
}

func singularShape(fd protoreflect.FieldDescriptor) shape {
	switch fd.Kind() {
	case protoreflect.EnumKind:
		return shape{enum: fd.Enum()}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return shape{msg: fd.Message()}
	}
	return shape{}
}

func fieldShape(fd protoreflect.FieldDescriptor) shape {
	switch {
	case fd.IsMap():
		v := singularShape(fd.MapValue())
		return shape{elem: &v, isMap: true}
	case fd.IsList():
		v := singularShape(fd)
		return shape{elem: &v}
	}
	return singularShape(fd)
}

// enumRewriter copies protojson output (valid JSON, with the random white
// space protojson adds) without white space, renaming enum values.
type enumRewriter struct {
	src []byte
	pos int
	out []byte
}

var errJSONEnd = errors.New("unexpected end of JSON")

func (w *enumRewriter) skipSpace() {
	for w.pos < len(w.src) {
		switch w.src[w.pos] {
		case ' ', '\t', '\n', '\r':
			w.pos++
		default:
			return
		}
	}
}

// str returns the raw JSON string at pos, quotes included, and moves past it.
func (w *enumRewriter) str() ([]byte, error) {
	start := w.pos
	for i := w.pos + 1; i < len(w.src); i++ {
		switch w.src[i] {
		case '\\':
			i++
		case '"':
			w.pos = i + 1
			return w.src[start:w.pos], nil
		}
	}
	return nil, errJSONEnd
}

func (w *enumRewriter) value(s shape) error {
	w.skipSpace()
	if w.pos >= len(w.src) {
		return errJSONEnd
	}
	switch w.src[w.pos] {
	case '{':
		return w.object(s)
	case '[':
		return w.array(s)
	case '"':
		raw, err := w.str()
		if err != nil {
			return err
		}
		if s.enum != nil {
			// Enum value names are identifiers: never escaped.
			if n, ok := renamesOf(s.enum)[string(raw[1:len(raw)-1])]; ok {
				w.out = strconv.AppendQuote(w.out, n)
				return nil
			}
		}
		w.out = append(w.out, raw...)
		return nil
	}
	// A number, true, false or null.
	start := w.pos
	for w.pos < len(w.src) && !strings.ContainsRune(",]} \t\n\r", rune(w.src[w.pos])) {
		w.pos++
	}
	w.out = append(w.out, w.src[start:w.pos]...)
	return nil
}

func (w *enumRewriter) object(s shape) error {
	w.out = append(w.out, '{')
	w.pos++
	md := s.msg
	for first := true; ; first = false {
		w.skipSpace()
		if w.pos >= len(w.src) {
			return errJSONEnd
		}
		if w.src[w.pos] == '}' {
			w.out = append(w.out, '}')
			w.pos++
			return nil
		}
		if !first {
			if w.src[w.pos] != ',' {
				return fmt.Errorf("expected , at %d", w.pos)
			}
			w.out = append(w.out, ',')
			w.pos++
			w.skipSpace()
		}
		if w.pos >= len(w.src) || w.src[w.pos] != '"' {
			return fmt.Errorf("expected a key at %d", w.pos)
		}
		key, err := w.str()
		if err != nil {
			return err
		}
		w.out = append(w.out, key...)
		w.skipSpace()
		if w.pos >= len(w.src) || w.src[w.pos] != ':' {
			return fmt.Errorf("expected : at %d", w.pos)
		}
		w.out = append(w.out, ':')
		w.pos++
		name := string(key[1 : len(key)-1])
		var child shape
		switch {
		case s.isMap:
			child = *s.elem
		case md != nil && md.FullName() == "google.protobuf.Any" && name == "@type":
			// protojson writes an Any's @type first; its other keys are
			// the fields of the type it names.
			w.skipSpace()
			start := len(w.out)
			if err := w.value(shape{}); err != nil {
				return err
			}
			if url, err := strconv.Unquote(string(w.out[start:])); err == nil {
				if mt, err := protoregistry.GlobalTypes.FindMessageByURL(url); err == nil {
					md = mt.Descriptor()
				}
			}
			continue
		case md != nil:
			fd := md.Fields().ByName(protoreflect.Name(name))
			if fd == nil {
				fd = md.Fields().ByJSONName(name)
			}
			if fd != nil {
				child = fieldShape(fd)
			}
			// Else a well-known type's own JSON (Struct's keys, an Any's
			// embedded "value"): copied as is.
		}
		if err := w.value(child); err != nil {
			return err
		}
	}
}

func (w *enumRewriter) array(s shape) error {
	w.out = append(w.out, '[')
	w.pos++
	var elem shape
	if s.elem != nil && !s.isMap {
		elem = *s.elem
	}
	for first := true; ; first = false {
		w.skipSpace()
		if w.pos >= len(w.src) {
			return errJSONEnd
		}
		if w.src[w.pos] == ']' {
			w.out = append(w.out, ']')
			w.pos++
			return nil
		}
		if !first {
			if w.src[w.pos] != ',' {
				return fmt.Errorf("expected , at %d", w.pos)
			}
			w.out = append(w.out, ',')
			w.pos++
		}
		if err := w.value(elem); err != nil {
			return err
		}
	}
}
