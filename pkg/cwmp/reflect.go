package cwmp

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The message structs are mapped to XML by their field names and a small
// `cwmp:"Name,opts"` tag. Options:
//
//	array=prefix:Type  a SOAP-encoded array; items are <Type> elements and
//	                   the wrapper carries soap-enc:arrayType="prefix:Type[N]"
//	flat               repeated elements without a wrapper (SetParameterValuesFault)
//	keep               keep surrounding white space (string values, docs/cwmp-interop.md #12)
//	required           a missing or empty element is a decode error (docs/cwmp-interop.md #16)
//	duops              ChangeDUState operations (custom wire form)
type fieldKind int

const (
	kString fieldKind = iota
	kBool
	kInt
	kUint
	kTime
	kValue
	kStruct
	kStrings
	kStructs
	kDUOps
)

type fieldInfo struct {
	index     int
	name      string
	kind      fieldKind
	arrayType string // "cwmp:ParameterValueStruct"
	item      string // "ParameterValueStruct"
	keep      bool
	required  bool
	flat      bool
}

var (
	fieldCache sync.Map // reflect.Type → []fieldInfo
	timeType   = reflect.TypeOf(time.Time{})
	valueType  = reflect.TypeOf(Value{})
	duOpsType  = reflect.TypeOf([]DUOperation(nil))
)

func reflectTypeOf(m Message) reflect.Type { return reflect.TypeOf(m).Elem() }
func newOf(t reflect.Type) Message         { return reflect.New(t).Interface().(Message) }
func valueOf(v any) reflect.Value          { return reflect.ValueOf(v) }

func fieldsOf(t reflect.Type) []fieldInfo {
	if f, ok := fieldCache.Load(t); ok {
		return f.([]fieldInfo)
	}
	var out []fieldInfo
	for i := 0; i < t.NumField(); i++ {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		fi := fieldInfo{index: i, name: sf.Name}
		if tag, ok := sf.Tag.Lookup("cwmp"); ok {
			parts := strings.Split(tag, ",")
			if parts[0] != "" {
				fi.name = parts[0]
			}
			for _, o := range parts[1:] {
				switch {
				case strings.HasPrefix(o, "array="):
					fi.arrayType = strings.TrimPrefix(o, "array=")
					fi.item = fi.arrayType[strings.IndexByte(fi.arrayType, ':')+1:]
				case o == "keep":
					fi.keep = true
				case o == "required":
					fi.required = true
				case o == "flat":
					fi.flat = true
				}
			}
		}
		switch ft := sf.Type; {
		case ft == timeType:
			fi.kind = kTime
		case ft == valueType:
			fi.kind = kValue
		case ft == duOpsType:
			fi.kind = kDUOps
		case ft.Kind() == reflect.String:
			fi.kind = kString
		case ft.Kind() == reflect.Bool:
			fi.kind = kBool
		case ft.Kind() == reflect.Int || ft.Kind() == reflect.Int32:
			fi.kind = kInt
		case ft.Kind() == reflect.Uint32:
			fi.kind = kUint
		case ft.Kind() == reflect.Struct:
			fi.kind = kStruct
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.String:
			fi.kind = kStrings
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
			fi.kind = kStructs
		default:
			panic(fmt.Sprintf("cwmp: unsupported field %s.%s", t.Name(), sf.Name))
		}
		out = append(out, fi)
	}
	fieldCache.Store(t, out)
	return out
}

// decodeStruct fills v (a struct) from n's children. Missing elements keep
// their zero value, except dateTimes, which become UnknownTime (the same
// instant as time.Time{}); docs/cwmp-interop.md #16.
func decodeStruct(n *node, v reflect.Value) error {
	for _, f := range fieldsOf(v.Type()) {
		fv := v.Field(f.index)
		if f.flat {
			for _, k := range n.kids {
				if strings.EqualFold(k.local, f.name) {
					ev := reflect.New(fv.Type().Elem()).Elem()
					if err := decodeStruct(k, ev); err != nil {
						return err
					}
					fv.Set(reflect.Append(fv, ev))
				}
			}
			continue
		}
		if f.kind == kDUOps {
			ops, err := decodeDUOps(n)
			if err != nil {
				return err
			}
			fv.Set(reflect.ValueOf(ops))
			continue
		}
		c := n.child(f.name)
		if c == nil && f.kind == kStruct {
			// A missing struct still checks its required fields (an Inform
			// without DeviceId lacks OUI and SerialNumber).
			c = &node{local: f.name}
		}
		if c == nil {
			if f.required {
				return fmt.Errorf("missing required element %s", f.name)
			}
			if f.kind == kValue {
				// A missing Value is an empty string, as a missing xsi:type is.
				fv.Set(reflect.ValueOf(Value{Type: TypeString}))
			}
			continue
		}
		if err := decodeField(c, f, fv); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

func decodeField(c *node, f fieldInfo, fv reflect.Value) error {
	raw := c.text()
	s := strings.TrimSpace(raw)
	if f.required && s == "" && f.kind != kStruct {
		return fmt.Errorf("required element is empty")
	}
	switch f.kind {
	case kString:
		if f.keep {
			fv.SetString(raw)
		} else {
			fv.SetString(s)
		}
	case kBool:
		if s == "" {
			return nil
		}
		b, err := ParseBool(s)
		if err != nil {
			return err
		}
		fv.SetBool(b)
	case kInt:
		if s == "" {
			return nil
		}
		n, err := strconv.ParseInt(s, 10, 32)
		if err != nil {
			return fmt.Errorf("invalid integer %q", s)
		}
		fv.SetInt(n)
	case kUint:
		if s == "" {
			return nil
		}
		n, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return fmt.Errorf("invalid unsignedInt %q", s)
		}
		fv.SetUint(n)
	case kTime:
		t, _ := ParseDateTime(s) // invalid → UnknownTime (docs/cwmp-interop.md #14)
		fv.Set(reflect.ValueOf(t))
	case kValue:
		xt, _ := xsiType(c)
		t := ParseValueType(xt)
		d := raw
		if t.Typed() {
			d = s // docs/cwmp-interop.md #12: trim typed values, keep strings
		}
		fv.Set(reflect.ValueOf(Value{Type: t, Data: d}))
	case kStruct:
		return decodeStruct(c, fv)
	case kStrings:
		if len(c.kids) == 0 {
			return nil
		}
		out := make([]string, 0, len(c.kids))
		for _, k := range c.kids {
			if f.keep {
				out = append(out, k.text())
			} else {
				out = append(out, strings.TrimSpace(k.text()))
			}
		}
		fv.Set(reflect.ValueOf(out))
	case kStructs:
		// The arrayType count is ignored: the children are the truth
		// (TR-069 §3.5). Their element names are not checked either.
		if len(c.kids) == 0 {
			return nil
		}
		sl := reflect.MakeSlice(fv.Type(), len(c.kids), len(c.kids))
		for i, k := range c.kids {
			if err := decodeStruct(k, sl.Index(i)); err != nil {
				return fmt.Errorf("item %d: %w", i, err)
			}
		}
		fv.Set(sl)
	}
	return nil
}

// xsiType returns the value of an xsi:type attribute, whatever its prefix
// resolved to (an undeclared "xsi" prefix leaves Space = "xsi").
func xsiType(n *node) (string, bool) {
	for _, a := range n.attrs {
		if a.Name.Local == "type" && (a.Name.Space == NamespaceXSI || a.Name.Space == "xsi" || a.Name.Space == "") {
			return a.Value, true
		}
	}
	return "", false
}

// decodeDUOps reads ChangeDUState operations: repeated <Operations
// xsi:type="cwmp:InstallOpStruct"> elements, or one <Operations> wrapper
// holding <InstallOpStruct> etc. children.
func decodeDUOps(n *node) ([]DUOperation, error) {
	var ops []DUOperation
	for _, k := range n.kids {
		if !strings.EqualFold(k.local, "Operations") {
			continue
		}
		if t, ok := xsiType(k); ok && !strings.Contains(strings.ToLower(t), "array") {
			op, err := decodeDUOp(k, t)
			if err != nil {
				return nil, err
			}
			ops = append(ops, op)
			continue
		}
		for _, item := range k.kids {
			t, ok := xsiType(item)
			if !ok {
				t = item.local
			}
			op, err := decodeDUOp(item, t)
			if err != nil {
				return nil, err
			}
			ops = append(ops, op)
		}
	}
	return ops, nil
}

func decodeDUOp(n *node, typ string) (DUOperation, error) {
	if i := strings.LastIndexByte(typ, ':'); i >= 0 {
		typ = typ[i+1:]
	}
	var op DUOperation
	switch strings.ToLower(typ) {
	case "installopstruct":
		op.Kind = DUInstall
	case "updateopstruct":
		op.Kind = DUUpdate
	case "uninstallopstruct":
		op.Kind = DUUninstall
	default:
		return op, fmt.Errorf("operations: unknown operation type %q", typ)
	}
	get := func(name string) string {
		if c := n.child(name); c != nil {
			return strings.TrimSpace(c.text())
		}
		return ""
	}
	op.URL, op.UUID, op.Username = get("URL"), get("UUID"), get("Username")
	if c := n.child("Password"); c != nil {
		op.Password = c.text()
	}
	op.ExecutionEnvRef, op.Version = get("ExecutionEnvRef"), get("Version")
	return op, nil
}
