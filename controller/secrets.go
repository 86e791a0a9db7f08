package controller

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/duet-dm/duet/pkg/netguard"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// Redacted is what the API shows instead of a secret value.
const Redacted = "***"

// DefaultSecretParams are the parameter-name endings whose values are
// secrets (TR-181: WiFi KeyPassphrase, PreSharedKey, SAEPassphrase,
// WEPKey, RadiusSecret, Users.User.{i}.Password, ManagementServer.
// ConnectionRequestPassword, …). NewSecretNames adds to them (api.Options.SecretParams).
var DefaultSecretParams = []string{"Password", "Passphrase", "KeyPassphrase", "PreSharedKey", "Secret", "WEPKey"}

// SecretNames decides which values Duet never shows unasked: the REST API
// and the console render values through it.
type SecretNames struct{ suffixes []string }

// NewSecretNames is DefaultSecretParams plus the endings in extra.
func NewSecretNames(extra []string) SecretNames {
	s := SecretNames{suffixes: append([]string(nil), DefaultSecretParams...)}
	for _, e := range extra {
		if e = strings.TrimSpace(e); e != "" {
			s.suffixes = append(s.suffixes, e)
		}
	}
	return s
}

// IsSecret reports a parameter path (or argument name) whose value is a
// secret: it ends with one of the names ("…Password", "…PreSharedKey").
func (s SecretNames) IsSecret(path string) bool {
	for _, x := range s.suffixes {
		if strings.HasSuffix(path, x) {
			return true
		}
	}
	return false
}

var parameterFullName = (&duetv1.Parameter{}).ProtoReflect().Descriptor().FullName()

// RedactMessage replaces, in place, the value of every Parameter with a
// secret path and every string map entry with a secret key (Download and
// Upload "Password", operate arguments). It reports whether it changed
// anything.
func (s SecretNames) RedactMessage(m protoreflect.Message) bool {
	changed := false
	if m.Descriptor().FullName() == parameterFullName {
		p := m.Interface().(*duetv1.Parameter)
		if s.IsSecret(p.Path) && p.Value != "" {
			p.Value = Redacted
			return true
		}
		return false
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapKey().Kind() != protoreflect.StringKind {
				return true
			}
			mp := v.Map()
			var hide []protoreflect.MapKey
			mp.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				switch fd.MapValue().Kind() {
				case protoreflect.StringKind:
					if s.IsSecret(k.String()) && mv.String() != "" {
						hide = append(hide, k)
					}
				case protoreflect.MessageKind:
					if s.RedactMessage(mv.Message()) {
						changed = true
					}
				}
				return true
			})
			for _, k := range hide {
				mp.Set(k, protoreflect.ValueOfString(Redacted))
				changed = true
			}
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if s.RedactMessage(l.Get(i).Message()) {
					changed = true
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			if s.RedactMessage(v.Message()) {
				changed = true
			}
		}
		return true
	})
	return changed
}

// RedactProto returns a redacted copy of msg (msg itself when nothing is
// secret) and whether anything was hidden.
func (s SecretNames) RedactProto(msg proto.Message) (proto.Message, bool) {
	c := proto.Clone(msg)
	if s.RedactMessage(c.ProtoReflect()) {
		return c, true
	}
	return msg, false
}

// RedactTaskRequest hides secret values in a stored task request (a task's
// or a task batch's): set and add "params", "input_args", and a "url"'s
// userinfo. Other fields are kept as they are.
func (s SecretNames) RedactTaskRequest(raw json.RawMessage) (json.RawMessage, bool) {
	var r map[string]json.RawMessage
	if len(raw) == 0 || json.Unmarshal(raw, &r) != nil {
		return raw, false
	}
	changed := false
	var ps []map[string]any
	if json.Unmarshal(r["params"], &ps) == nil {
		hit := false
		for _, p := range ps {
			path, _ := p["path"].(string)
			if v, _ := p["value"].(string); v != "" && s.IsSecret(path) {
				p["value"] = Redacted
				hit = true
			}
		}
		if hit {
			r["params"], _ = json.Marshal(ps)
			changed = true
		}
	}
	var args map[string]any
	if json.Unmarshal(r["input_args"], &args) == nil {
		hit := false
		for k, v := range args {
			if sv, _ := v.(string); sv != "" && s.IsSecret(k) {
				args[k] = Redacted
				hit = true
			}
		}
		if hit {
			r["input_args"], _ = json.Marshal(args)
			changed = true
		}
	}
	var u string
	if json.Unmarshal(r["url"], &u) == nil {
		if ru := netguard.RedactURL(u); ru != u {
			r["url"], _ = json.Marshal(ru)
			changed = true
		}
	}
	if !changed {
		return raw, false
	}
	b, err := json.Marshal(r)
	if err != nil {
		return raw, false
	}
	return b, true
}

// RedactJSON hides secret values anywhere in a JSON document (a policy's
// spec, an audit entry's before and after): the "value" and "expr" of an
// object whose "path" is a secret parameter, a string member whose name is
// a secret name ({"KeyPassphrase": "…"}, input_args), and the userinfo of
// URLs. It returns raw itself when nothing is secret.
func (s SecretNames) RedactJSON(raw json.RawMessage) (json.RawMessage, bool) {
	if len(raw) == 0 {
		return raw, false
	}
	var v any
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // numbers come back as they were written
	if dec.Decode(&v) != nil {
		return raw, false
	}
	if !s.redactValue(v) {
		return raw, false
	}
	b, err := json.Marshal(v)
	if err != nil {
		return raw, false
	}
	return b, true
}

// redactValue redacts v in place (objects and arrays) and reports whether
// it changed anything.
func (s SecretNames) redactValue(v any) bool {
	changed := false
	switch x := v.(type) {
	case map[string]any:
		if p, ok := x["path"].(string); ok && s.IsSecret(p) && redactMembers(x) {
			changed = true
		}
		for k, m := range x {
			switch mv := m.(type) {
			case map[string]any:
				// {"Password": {"expr": "…"}} (an objects policy's parameters)
				if s.IsSecret(k) && redactMembers(mv) {
					changed = true
				}
				if s.redactValue(mv) {
					changed = true
				}
			case string:
				if mv == "" || mv == Redacted {
					continue
				}
				if s.IsSecret(k) {
					x[k] = Redacted
					changed = true
				} else if strings.Contains(mv, "://") && netguard.RedactURL(mv) != mv {
					ru := netguard.RedactURL(mv)
					x[k] = ru
					changed = true
				}
			default:
				if s.redactValue(mv) {
					changed = true
				}
			}
		}
	case []any:
		for _, e := range x {
			if s.redactValue(e) {
				changed = true
			}
		}
	}
	return changed
}

// valueMembers are the members that carry the value of an object naming a
// parameter: a policy's value or expression, a preview's current and
// desired values.
var valueMembers = []string{"value", "expr", "current", "desired"}

func redactMembers(x map[string]any) bool {
	changed := false
	for _, k := range valueMembers {
		if sv, ok := x[k].(string); ok && sv != "" && sv != Redacted {
			x[k] = Redacted
			changed = true
		}
	}
	return changed
}

// RedactAudit hides secret values in audit entries' before and after, in
// place (a task's set values, a policy's spec): the audit log is read by
// every role, and a secret in it is never revealed.
func (s SecretNames) RedactAudit(entries []store.AuditEntry) {
	for i := range entries {
		entries[i].Before, _ = s.RedactJSON(entries[i].Before)
		entries[i].After, _ = s.RedactJSON(entries[i].After)
	}
}

// RedactPolicy hides secret values in a policy's spec.
func (s SecretNames) RedactPolicy(p store.Policy) store.Policy {
	p.Spec, _ = s.RedactJSON(p.Spec)
	return p
}

// RestoreRedacted puts back, in a policy spec sent to replace stored, the
// stored values the API showed as Redacted: a client that reads a policy,
// edits it and sends it back keeps its secrets instead of setting them to
// "***". A value is found by the parameter path it belongs to ("value" and
// "expr" of {"path": …}), or else by its place in the document (an
// objects policy's entry by its table and key). A Redacted value with
// nothing stored at its place is left as it is.
func RestoreRedacted(spec, stored json.RawMessage) (json.RawMessage, error) {
	if !bytes.Contains(spec, []byte(`"`+Redacted+`"`)) {
		return spec, nil
	}
	var old, cur any
	if json.Unmarshal(stored, &old) != nil {
		return spec, nil
	}
	dec := json.NewDecoder(bytes.NewReader(spec))
	dec.UseNumber()
	if err := dec.Decode(&cur); err != nil {
		return spec, nil // the validation names the error
	}
	values := map[string]string{}
	walkSlots(old, "", func(slot string, v string, _ func(string)) { values[slot] = v })
	walkSlots(cur, "", func(slot string, v string, set func(string)) {
		if was, ok := values[slot]; ok && v == Redacted {
			set(was)
		}
	})
	return json.Marshal(cur)
}

// walkSlots calls fn for every string in v with the place it is at and a
// function replacing it.
func walkSlots(v any, at string, fn func(slot, value string, set func(string))) {
	switch x := v.(type) {
	case map[string]any:
		base := at
		if p, ok := x["path"].(string); ok {
			base = "path:" + p
		}
		for k, m := range x {
			if s, ok := m.(string); ok {
				fn(base+"/"+k, s, func(nv string) { x[k] = nv })
				continue
			}
			walkSlots(m, base+"/"+k, fn)
		}
	case []any:
		for i, e := range x {
			seg := strconv.Itoa(i)
			if m, ok := e.(map[string]any); ok && m["table"] != nil && m["key"] != nil {
				// An objects policy's entry is known by its table and key.
				k, _ := json.Marshal(m["key"])
				seg = fmt.Sprintf("%v%s", m["table"], k)
			}
			walkSlots(e, at+"/"+seg, fn)
		}
	}
}
