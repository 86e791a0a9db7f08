package cwmp

import (
	"bytes"
	"errors"
	"reflect"
	"strconv"
	"time"
	"unicode/utf8"
)

// ErrEmptyBody is returned by Encode for an Envelope without a Body. An
// empty CWMP message is zero bytes (an empty POST or a 204), not XML.
var ErrEmptyBody = errors.New("cwmp: nothing to encode: an empty message is zero bytes")

// ContentType is the Content-Type to send with an encoded envelope.
const ContentType = `text/xml; charset="utf-8"`

// Encoder builds envelopes. The zero value is ready to use and sends
// booleans as true/false.
type Encoder struct {
	// NumericBooleans sends booleans as 1/0, for CPEs that reject
	// true/false (docs/cwmp-interop.md #13).
	NumericBooleans bool
}

// Encode builds env with the zero Encoder.
func Encode(env *Envelope) ([]byte, error) { return Encoder{}.Encode(env) }

// Encode renders env as UTF-8 XML. All namespaces are declared on the
// Envelope and the method element is always prefixed "cwmp:" (docs/cwmp-interop.md
// #3); the namespace is env.Namespace or DefaultNamespace.
func (e Encoder) Encode(env *Envelope) ([]byte, error) {
	if env == nil || env.Body == nil {
		return nil, ErrEmptyBody
	}
	w := &writer{numBool: e.NumericBooleans}
	w.buf.Grow(1024)
	ns := env.Namespace
	if ns == "" {
		ns = DefaultNamespace
	}
	w.raw(`<?xml version="1.0" encoding="UTF-8"?>` + "\n" +
		`<soap-env:Envelope xmlns:soap-env="` + NamespaceSOAPEnv +
		`" xmlns:soap-enc="` + NamespaceSOAPEnc +
		`" xmlns:xsd="` + NamespaceXSD +
		`" xmlns:xsi="` + NamespaceXSI +
		`" xmlns:cwmp="`)
	w.text(ns)
	w.raw(`">`)
	w.header(&env.Header)
	w.raw(`<soap-env:Body>`)
	switch m := env.Body.(type) {
	case *Fault:
		w.fault(m)
	case *UnknownMethod:
		w.raw("<cwmp:" + m.Name + "/>")
	default:
		name := m.MethodName()
		v := reflect.ValueOf(m)
		if v.Kind() != reflect.Pointer || v.IsNil() {
			return nil, errors.New("cwmp: Body must be a non-nil pointer to a message struct")
		}
		w.raw("<cwmp:" + name + ">")
		w.fields(v.Elem())
		w.raw("</cwmp:" + name + ">")
	}
	w.raw(`</soap-env:Body></soap-env:Envelope>`)
	return w.buf.Bytes(), nil
}

type writer struct {
	buf     bytes.Buffer
	numBool bool
}

func (w *writer) raw(s string) { w.buf.WriteString(s) }

// text writes s escaped for element content and attribute values.
// Characters XML 1.0 cannot carry are replaced with U+FFFD.
func (w *writer) text(s string) {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '&':
				w.raw("&amp;")
			case c == '<':
				w.raw("&lt;")
			case c == '>':
				w.raw("&gt;")
			case c == '"':
				w.raw("&quot;")
			case c == '\r':
				w.raw("&#xD;")
			case c == '\n' || c == '\t':
				w.buf.WriteByte(c)
			case c < 0x20:
				w.raw("\uFFFD")
			default:
				w.buf.WriteByte(c)
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 || r == 0xFFFE || r == 0xFFFF {
			w.raw("\uFFFD")
		} else {
			w.buf.WriteString(s[i : i+n])
		}
		i += n
	}
}

func (w *writer) elem(name, value string) {
	w.raw("<" + name + ">")
	w.text(value)
	w.raw("</" + name + ">")
}

func (w *writer) header(h *Header) {
	if h.ID == "" && !h.HoldRequests && h.SessionTimeout == 0 && h.SupportedCWMPVersions == "" && h.UseCWMPVersion == "" {
		return
	}
	w.raw(`<soap-env:Header>`)
	if h.ID != "" {
		w.raw(`<cwmp:ID soap-env:mustUnderstand="1">`)
		w.text(h.ID)
		w.raw(`</cwmp:ID>`)
	}
	if h.HoldRequests {
		w.raw(`<cwmp:HoldRequests soap-env:mustUnderstand="1">` + FormatBool(true, w.numBool) + `</cwmp:HoldRequests>`)
	}
	if h.SessionTimeout != 0 {
		w.raw(`<cwmp:SessionTimeout soap-env:mustUnderstand="0">` + strconv.FormatUint(uint64(h.SessionTimeout), 10) + `</cwmp:SessionTimeout>`)
	}
	if h.SupportedCWMPVersions != "" {
		w.raw(`<cwmp:SupportedCWMPVersions soap-env:mustUnderstand="0">`)
		w.text(h.SupportedCWMPVersions)
		w.raw(`</cwmp:SupportedCWMPVersions>`)
	}
	if h.UseCWMPVersion != "" {
		w.raw(`<cwmp:UseCWMPVersion soap-env:mustUnderstand="1">`)
		w.text(h.UseCWMPVersion)
		w.raw(`</cwmp:UseCWMPVersion>`)
	}
	w.raw(`</soap-env:Header>`)
}

func (w *writer) fault(f *Fault) {
	code, str := f.SOAPCode, f.SOAPString
	if code == "" {
		code = FaultSOAPCode(f.Detail.FaultCode)
	}
	if str == "" {
		str = "CWMP fault"
	}
	w.raw(`<soap-env:Fault>`)
	w.elem("faultcode", code)
	w.elem("faultstring", str)
	w.raw(`<detail><cwmp:Fault>`)
	w.fields(reflect.ValueOf(&f.Detail).Elem())
	w.raw(`</cwmp:Fault></detail></soap-env:Fault>`)
}

// fields writes every field of struct v in declaration order; the schema's
// sequence order is the declaration order of the Go structs.
func (w *writer) fields(v reflect.Value) {
	for _, f := range fieldsOf(v.Type()) {
		fv := v.Field(f.index)
		switch f.kind {
		case kString:
			w.elem(f.name, fv.String())
		case kBool:
			w.elem(f.name, FormatBool(fv.Bool(), w.numBool))
		case kInt:
			w.elem(f.name, strconv.FormatInt(fv.Int(), 10))
		case kUint:
			w.elem(f.name, strconv.FormatUint(fv.Uint(), 10))
		case kTime:
			w.elem(f.name, FormatDateTime(fv.Interface().(time.Time)))
		case kValue:
			val := fv.Interface().(Value)
			w.raw("<" + f.name + ` xsi:type="` + val.Type.XSIType() + `">`)
			data := val.Data
			if val.Type == TypeBoolean {
				data = NormalizeValue(TypeBoolean, data, w.numBool)
			}
			w.text(data)
			w.raw("</" + f.name + ">")
		case kStruct:
			if f.flat {
				continue
			}
			w.raw("<" + f.name + ">")
			w.fields(fv)
			w.raw("</" + f.name + ">")
		case kStrings:
			w.raw("<" + f.name + ` soap-enc:arrayType="` + f.arrayType + "[" + strconv.Itoa(fv.Len()) + `]">`)
			for i := 0; i < fv.Len(); i++ {
				w.elem(f.item, fv.Index(i).String())
			}
			w.raw("</" + f.name + ">")
		case kStructs:
			if f.flat {
				for i := 0; i < fv.Len(); i++ {
					w.raw("<" + f.name + ">")
					w.fields(fv.Index(i))
					w.raw("</" + f.name + ">")
				}
				continue
			}
			w.raw("<" + f.name + ` soap-enc:arrayType="` + f.arrayType + "[" + strconv.Itoa(fv.Len()) + `]">`)
			for i := 0; i < fv.Len(); i++ {
				w.raw("<" + f.item + ">")
				w.fields(fv.Index(i))
				w.raw("</" + f.item + ">")
			}
			w.raw("</" + f.name + ">")
		case kDUOps:
			for _, op := range fv.Interface().([]DUOperation) {
				w.duOp(op)
			}
		}
	}
}

func (w *writer) duOp(op DUOperation) {
	w.raw(`<Operations xsi:type="cwmp:` + string(op.Kind) + `OpStruct">`)
	switch op.Kind {
	case DUInstall:
		w.elem("URL", op.URL)
		w.elem("UUID", op.UUID)
		w.elem("Username", op.Username)
		w.elem("Password", op.Password)
		w.elem("ExecutionEnvRef", op.ExecutionEnvRef)
	case DUUpdate:
		w.elem("UUID", op.UUID)
		w.elem("Version", op.Version)
		w.elem("URL", op.URL)
		w.elem("Username", op.Username)
		w.elem("Password", op.Password)
	default:
		w.elem("UUID", op.UUID)
		w.elem("Version", op.Version)
		w.elem("ExecutionEnvRef", op.ExecutionEnvRef)
	}
	w.raw(`</Operations>`)
}
