package cwmp

import (
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// rawRPCs are the ACS→CPE requests a cwmp_rpc command may name.
var rawRPCs = map[string]func() cwmp.Message{
	"GetRPCMethods":          func() cwmp.Message { return &cwmp.GetRPCMethods{} },
	"SetParameterValues":     func() cwmp.Message { return &cwmp.SetParameterValues{} },
	"GetParameterValues":     func() cwmp.Message { return &cwmp.GetParameterValues{} },
	"GetParameterNames":      func() cwmp.Message { return &cwmp.GetParameterNames{} },
	"SetParameterAttributes": func() cwmp.Message { return &cwmp.SetParameterAttributes{} },
	"GetParameterAttributes": func() cwmp.Message { return &cwmp.GetParameterAttributes{} },
	"AddObject":              func() cwmp.Message { return &cwmp.AddObject{} },
	"DeleteObject":           func() cwmp.Message { return &cwmp.DeleteObject{} },
	"Reboot":                 func() cwmp.Message { return &cwmp.Reboot{} },
	"Download":               func() cwmp.Message { return &cwmp.Download{} },
	"Upload":                 func() cwmp.Message { return &cwmp.Upload{} },
	"FactoryReset":           func() cwmp.Message { return &cwmp.FactoryReset{} },
	"ScheduleInform":         func() cwmp.Message { return &cwmp.ScheduleInform{} },
	"GetQueuedTransfers":     func() cwmp.Message { return &cwmp.GetQueuedTransfers{} },
	"GetAllQueuedTransfers":  func() cwmp.Message { return &cwmp.GetAllQueuedTransfers{} },
	"ScheduleDownload":       func() cwmp.Message { return &cwmp.ScheduleDownload{} },
	"CancelTransfer":         func() cwmp.Message { return &cwmp.CancelTransfer{} },
	"ChangeDUState":          func() cwmp.Message { return &cwmp.ChangeDUState{} },
	"SetVouchers":            func() cwmp.Message { return &cwmp.SetVouchers{} },
	"GetOptions":             func() cwmp.Message { return &cwmp.GetOptions{} },
}

// maxArrayItems bounds N in "Name.N..." keys.
const maxArrayItems = 1024

type rawOp struct {
	base
	method string
	values map[string]string
}

// newRawRPC builds any ACS→CPE RPC from its arguments (key format in the
// package documentation). Unknown argument keys are refused so a typo does
// not silently send an empty element.
func newRawRPC(r *duetv1.CwmpRpc) op {
	o := &rawOp{method: r.GetMethod(), values: map[string]string{}}
	mk := rawRPCs[r.GetMethod()]
	if mk == nil {
		o.fail(devicemodel.Errorf(devicemodel.CodeUnsupported, "cwmp_rpc: unknown method %q", r.GetMethod()))
		return o
	}
	m := mk()
	used := map[string]bool{}
	if err := fillStruct(reflect.ValueOf(m).Elem(), "", r.GetArgs(), used); err != nil {
		o.fail(err)
		return o
	}
	if len(used) != len(r.GetArgs()) {
		var unknown []string
		for k := range r.GetArgs() {
			if !used[k] {
				unknown = append(unknown, k)
			}
		}
		slices.Sort(unknown)
		o.fail(devicemodel.Errorf(devicemodel.CodeInvalidArgument, "cwmp_rpc %s: unknown arguments %s", o.method, strings.Join(unknown, ", ")))
		return o
	}
	o.pending = []cwmp.Message{m}
	return o
}

func (o *rawOp) handle(resp cwmp.Message, err *devicemodel.Error) {
	if err != nil {
		o.fail(err)
		return
	}
	flattenInto(o.values, "", resp)
}

func (o *rawOp) result() *duetv1.CommandResult {
	// A transfer's result is the neutral form, so the controller can tell
	// "accepted" (Status 1) from "done" whichever way it was asked.
	switch r := o.last.(type) {
	case *cwmp.Download:
		t := &duetv1.TransferResult{CommandKey: r.CommandKey}
		if st, err := strconv.Atoi(o.values["Status"]); err == nil && o.err == nil {
			transferStatus(t, st, parseValueTime(o.values["StartTime"]), parseValueTime(o.values["CompleteTime"]))
		}
		return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_Transfer{Transfer: t}})
	case *cwmp.Upload:
		t := &duetv1.TransferResult{CommandKey: r.CommandKey, Upload: true}
		if st, err := strconv.Atoi(o.values["Status"]); err == nil && o.err == nil {
			transferStatus(t, st, parseValueTime(o.values["StartTime"]), parseValueTime(o.values["CompleteTime"]))
		}
		return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_Transfer{Transfer: t}})
	}
	return o.finish(&duetv1.CommandResult{Result: &duetv1.CommandResult_CwmpRpc{CwmpRpc: &duetv1.CwmpRpcResult{Method: o.method, Values: o.values}}})
}

var (
	timeType  = reflect.TypeFor[time.Time]()
	valueTypT = reflect.TypeFor[cwmp.Value]()
)

func badArg(key, v, want string) *devicemodel.Error {
	return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "cwmp_rpc: argument %s=%q is not %s", key, v, want)
}

// fillStruct sets v's fields from args under prefix.
func fillStruct(v reflect.Value, prefix string, args map[string]string, used map[string]bool) *devicemodel.Error {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		key := prefix + f.Name
		fv := v.Field(i)
		if f.Name == "Kind" && f.Type.Kind() == reflect.String {
			// DUOperation.Kind: "Install"/"Update"/"Uninstall"; "Type" is
			// accepted too (the name the bus schema's comment uses).
			if s, ok := args[prefix+"Type"]; ok {
				used[prefix+"Type"] = true
				fv.SetString(s)
			}
		}
		if f.Type == valueTypT {
			// ParameterValueStruct: "…Value" is the data, "…Type" the xsi:type.
			if s, ok := args[key]; ok {
				used[key] = true
				fv.Field(1).SetString(s)
			}
			typ := cwmp.TypeString
			if s, ok := args[prefix+"Type"]; ok {
				used[prefix+"Type"] = true
				typ = cwmp.ParseValueType(s)
			}
			fv.Field(0).SetString(string(typ))
			continue
		}
		switch {
		case f.Type == timeType:
			if s, ok := args[key]; ok {
				used[key] = true
				tm, ok := cwmp.ParseDateTime(s)
				if !ok {
					return badArg(key, s, "a dateTime")
				}
				fv.Set(reflect.ValueOf(tm))
			}
		case f.Type.Kind() == reflect.Struct:
			if err := fillStruct(fv, key+".", args, used); err != nil {
				return err
			}
		case f.Type.Kind() == reflect.Slice:
			el := f.Type.Elem()
			for n := 1; n <= maxArrayItems; n++ {
				item := key + "." + strconv.Itoa(n)
				if el.Kind() == reflect.String {
					s, ok := args[item]
					if !ok {
						break
					}
					used[item] = true
					fv.Set(reflect.Append(fv, reflect.ValueOf(s).Convert(el)))
					continue
				}
				if !hasPrefix(args, item+".") {
					break
				}
				nv := reflect.New(el).Elem()
				if err := fillStruct(nv, item+".", args, used); err != nil {
					return err
				}
				fv.Set(reflect.Append(fv, nv))
			}
		default:
			s, ok := args[key]
			if !ok {
				continue
			}
			used[key] = true
			if err := setScalar(fv, key, s); err != nil {
				return err
			}
		}
	}
	return nil
}

func hasPrefix(args map[string]string, p string) bool {
	for k := range args {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

func setScalar(fv reflect.Value, key, s string) *devicemodel.Error {
	switch fv.Kind() {
	case reflect.String:
		fv.SetString(s)
	case reflect.Bool:
		b, err := cwmp.ParseBool(s)
		if err != nil {
			return badArg(key, s, "a boolean")
		}
		fv.SetBool(b)
	case reflect.Int, reflect.Int32, reflect.Int64:
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 32)
		if err != nil {
			return badArg(key, s, "an int")
		}
		fv.SetInt(n)
	case reflect.Uint32, reflect.Uint, reflect.Uint64:
		n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
		if err != nil {
			return badArg(key, s, "an unsignedInt")
		}
		fv.SetUint(n)
	default:
		return badArg(key, s, "a supported type")
	}
	return nil
}

// flattenInto writes a response's elements as strings: scalars by name,
// arrays as "Name.N" / "Name.N.Field", nested structs as "Name.Field",
// dateTimes in xsd:dateTime form.
func flattenInto(out map[string]string, prefix string, m any) {
	v := reflect.ValueOf(m)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	flattenValue(out, prefix, v)
}

func flattenValue(out map[string]string, prefix string, v reflect.Value) {
	t := v.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		key := prefix + f.Name
		fv := v.Field(i)
		switch {
		case f.Type == valueTypT:
			out[key] = fv.Field(1).String()
			out[prefix+"Type"] = fv.Field(0).String()
		case f.Type == timeType:
			out[key] = cwmp.FormatDateTime(fv.Interface().(time.Time))
		case f.Type.Kind() == reflect.Struct:
			flattenValue(out, key+".", fv)
		case f.Type.Kind() == reflect.Slice:
			for n := 0; n < fv.Len(); n++ {
				item := key + "." + strconv.Itoa(n+1)
				if e := fv.Index(n); e.Kind() == reflect.Struct {
					flattenValue(out, item+".", e)
				} else {
					out[item] = scalarString(e)
				}
			}
		default:
			out[key] = scalarString(fv)
		}
	}
}

func scalarString(v reflect.Value) string {
	switch v.Kind() {
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	case reflect.Int, reflect.Int32, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Uint, reflect.Uint32, reflect.Uint64:
		return strconv.FormatUint(v.Uint(), 10)
	}
	return v.String()
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// parseValueTime reads a flattened dateTime value back; unknown is zero.
func parseValueTime(v string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}
	}
	return t
}
