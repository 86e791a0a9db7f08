package controller

import (
	"encoding/json"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/duet-dm/duet/pkg/netguard"
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
