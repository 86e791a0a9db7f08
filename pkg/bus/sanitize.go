package bus

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

var metricFieldsRefused = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_bus_event_fields_refused_total",
	Help: "Texts a device sent that did not go on the bus as sent (docs/bus.md, Field limits), by field and reason (too_long, invalid_utf8, nul).",
}, []string{"field", "reason"})

// Refusal is one text of an event that was dropped or cleaned.
type Refusal struct {
	Field  string // "device.manufacturer", "parameter", "reachability.address", …
	Reason string // too_long, invalid_utf8, nul
}

var (
	deviceIdentityName = (&duetv1.DeviceIdentity{}).ProtoReflect().Descriptor().FullName()
	reachabilityName   = (&duetv1.Reachability{}).ProtoReflect().Descriptor().FullName()
	parameterName      = (&duetv1.Parameter{}).ProtoReflect().Descriptor().FullName()
)

// SanitizeEvent bounds every text of an event a device caused, in place
// (issue 15 §1; the limits are in devicemodel and docs/bus.md):
//
//   - an identity fact (DeviceIdentity) or reachability field that is not
//     valid UTF-8, holds a NUL or is too long is dropped: it stays unknown
//     and never overwrites what is known;
//   - a Parameter whose path or value is bad is dropped from its list (a
//     cut or altered value would be a lie in the parameter cache);
//   - any other text is cleaned: bad bytes become U+FFFD, cut to
//     devicemodel.MaxValueLen.
//
// The device ID is not touched: it is validated on its own. Every adapter
// publishes through PublishEvents, which calls this, so no adapter can
// forget it.
func SanitizeEvent(ev *duetv1.Event) []Refusal {
	var out []Refusal
	sanitizeMessage(ev.ProtoReflect(), "", &out)
	return out
}

func sanitizeMessage(m protoreflect.Message, ctx string, out *[]Refusal) {
	name := m.Descriptor().FullName()
	switch name {
	case deviceIdentityName, reachabilityName:
		max, prefix := devicemodel.MaxFactLen, "device."
		if name == reachabilityName {
			max, prefix = devicemodel.MaxAddressLen, "reachability."
		}
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			if fd.Kind() != protoreflect.StringKind || fd.IsList() || fd.Name() == "id" {
				return true
			}
			if why := devicemodel.CheckText(v.String(), max); why != "" {
				*out = append(*out, Refusal{prefix + string(fd.Name()), why})
				m.Clear(fd)
			}
			return true
		})
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind && fd.Message().FullName() == parameterName:
			l := v.List()
			keep := 0
			for i := 0; i < l.Len(); i++ {
				p := l.Get(i).Message()
				pd := p.Descriptor().Fields()
				why := devicemodel.CheckText(p.Get(pd.ByName("path")).String(), devicemodel.MaxPathLen)
				if why == "" {
					why = devicemodel.CheckText(p.Get(pd.ByName("value")).String(), devicemodel.MaxValueLen)
				}
				if why != "" {
					*out = append(*out, Refusal{"parameter", why})
					continue
				}
				l.Set(keep, l.Get(i))
				keep++
			}
			l.Truncate(keep)
		case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				sanitizeMessage(l.Get(i).Message(), string(fd.Name()), out)
			}
		case fd.IsList() && fd.Kind() == protoreflect.StringKind:
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				if s, why := clean(l.Get(i).String()); why != "" {
					*out = append(*out, Refusal{string(fd.Name()), why})
					l.Set(i, protoreflect.ValueOfString(s))
				}
			}
		case fd.IsMap():
			mp := v.Map()
			type kv struct{ k, v string }
			var fix []kv
			var drop []protoreflect.MapKey
			mp.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				if fd.MapKey().Kind() == protoreflect.StringKind {
					if _, why := clean(k.String()); why != "" {
						*out = append(*out, Refusal{string(fd.Name()), why})
						drop = append(drop, k)
						return true
					}
				}
				switch fd.MapValue().Kind() {
				case protoreflect.StringKind:
					if s, why := clean(mv.String()); why != "" {
						*out = append(*out, Refusal{string(fd.Name()), why})
						fix = append(fix, kv{k.String(), s})
					}
				case protoreflect.MessageKind:
					sanitizeMessage(mv.Message(), string(fd.Name()), out)
				}
				return true
			})
			for _, k := range drop {
				mp.Clear(k)
			}
			for _, f := range fix {
				mp.Set(protoreflect.ValueOfString(f.k).MapKey(), protoreflect.ValueOfString(f.v))
			}
		case fd.Kind() == protoreflect.MessageKind:
			sanitizeMessage(v.Message(), string(fd.Name()), out)
		case fd.Kind() == protoreflect.StringKind:
			if fd.Name() == "id" && ctx == "" {
				return true // the event ID: Duet's own
			}
			if s, why := clean(v.String()); why != "" {
				*out = append(*out, Refusal{string(fd.Name()), why})
				m.Set(fd, protoreflect.ValueOfString(s))
			}
		}
		return true
	})
}

func clean(s string) (string, string) {
	why := devicemodel.CheckText(s, devicemodel.MaxValueLen)
	if why == "" {
		return s, ""
	}
	return devicemodel.SanitizeText(s, devicemodel.MaxValueLen), why
}

func (b *Bus) noteRefusals(ev *duetv1.Event, rs []Refusal) {
	for _, r := range rs {
		metricFieldsRefused.WithLabelValues(r.Field, r.Reason).Inc()
	}
	if len(rs) > 0 && b.refusals != nil {
		b.refusals.Warn("device sent texts Duet does not store as sent; dropped or cleaned (docs/bus.md, Field limits)",
			slog.String("device", ev.GetDevice().GetId()), slog.String("kind", EventKind(ev)),
			slog.String("field", rs[0].Field), slog.String("reason", rs[0].Reason), slog.Int("fields", len(rs)))
	}
}

// MetricFieldsRefused is the refusal counter of one field and reason, for
// tests.
func MetricFieldsRefused(field, reason string) prometheus.Counter {
	return metricFieldsRefused.WithLabelValues(field, reason)
}

// SanitizeResult bounds the texts of a command result as SanitizeEvent
// does an event's: a device's answer to a Get reaches the parameter cache
// through it.
func SanitizeResult(res *duetv1.CommandResult) []Refusal {
	var out []Refusal
	sanitizeMessage(res.ProtoReflect(), "result", &out)
	return out
}

func (b *Bus) noteResultRefusals(res *duetv1.CommandResult, rs []Refusal) {
	for _, r := range rs {
		metricFieldsRefused.WithLabelValues(r.Field, r.Reason).Inc()
	}
	if len(rs) > 0 && b.refusals != nil {
		b.refusals.Warn("device answered texts Duet does not store as sent; dropped or cleaned (docs/bus.md, Field limits)",
			slog.String("device", res.GetDeviceId()), slog.String("field", rs[0].Field),
			slog.String("reason", rs[0].Reason), slog.Int("fields", len(rs)))
	}
}
