package policy

import (
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/store"
)

// A policy, evaluated for one device, is a list of Wants: the state it
// asks the device to be in. Reconciliation compares Wants with what is
// known of the device (the parameter cache) and turns the difference into
// tasks; Wants of different policies with the same Key and different
// Values are a conflict, which the higher priority wins.
//
// Three sorts cover every policy kind on both protocols:
//   - a parameter value (CWMP SetParameterValues / USP Set);
//   - an object instance that must or must not exist, found by a key
//     parameter (CWMP AddObject+SetParameterValues / DeleteObject, USP
//     Add/Delete), with parameters to hold on it;
//   - CWMP notification attributes (SetParameterAttributes), which no
//     cache observes: they count as applied once per policy revision and
//     again after a bootstrap.
type Want struct {
	Param  *ParamWant  `json:"param,omitempty"`
	Object *ObjectWant `json:"object,omitempty"`
	Attr   *AttrWant   `json:"attribute,omitempty"`
	// Firmware: the software version the device must run (firmware.go).
	Firmware *FirmwareWant `json:"firmware,omitempty"`
}

// ParamWant is one parameter's desired value.
type ParamWant struct {
	Path  string `json:"path"`
	Value string `json:"value"`
}

// ObjectWant is an instance of a multi-instance object (Table, ending in
// '.', e.g. "Device.LocalAgent.Subscription.") identified by the value of
// one of its parameters (KeyParam, e.g. "Alias" or "ID").
type ObjectWant struct {
	Table    string `json:"table"`
	KeyParam string `json:"key_param"`
	KeyValue string `json:"key_value"`
	// Present: the instance must exist (Params held on it); false: it must
	// not exist (deleted when found).
	Present bool `json:"present"`
	// Create: when Present and the instance is missing, add it. False for
	// instances the device owns (a Controller entry): a missing one is a
	// failure, not something to create.
	Create bool `json:"create"`
	// Params are values to hold on the instance, by name relative to it
	// ("Enable", "NotifType"). The key parameter is implied.
	Params map[string]string `json:"params,omitempty"`
	// CreateOnly are values given when the instance is added and never
	// compared afterwards: a Subscription's ReferenceList cannot be
	// changed once written (TR-181 Device.LocalAgent.Subscription.{i}.), so a different list must be a
	// different instance (a different key), not a Set.
	CreateOnly map[string]string `json:"create_only,omitempty"`
	// StalePrefix, when set, also deletes every other instance of Table
	// whose KeyParam value starts with it: the instances this Want
	// replaces (a policy's Subscription for an older ReferenceList). The
	// instance keyed KeyValue is kept when Present. An empty KeyValue names
	// no instance: the Want only sweeps.
	StalePrefix string `json:"stale_prefix,omitempty"`
}

// AttrWant is a CWMP notification attribute (TR-069,
// SetParameterAttributes: 0 off, 1 passive, 2 active).
type AttrWant struct {
	Path         string `json:"path"`
	Notification int    `json:"notification"`
}

// Key identifies what a Want is about: two Wants with the same Key compete.
func (w Want) Key() string {
	switch {
	case w.Param != nil:
		return "param " + w.Param.Path
	case w.Object != nil && w.Object.KeyValue == "" && w.Object.StalePrefix != "":
		return "objects " + w.Object.Table + "[" + w.Object.KeyParam + "^=" + w.Object.StalePrefix + "]"
	case w.Object != nil:
		return "object " + w.Object.Table + "[" + w.Object.KeyParam + "==" + w.Object.KeyValue + "]"
	case w.Attr != nil:
		return "attribute " + w.Attr.Path
	case w.Firmware != nil:
		return "firmware"
	}
	return ""
}

// Value is the Want's desired state in a comparable form: competing Wants
// with equal Values agree.
func (w Want) Value() string {
	switch {
	case w.Param != nil:
		return w.Param.Value
	case w.Object != nil:
		if !w.Object.Present {
			return "absent"
		}
		var b strings.Builder
		b.WriteString("present")
		for _, k := range slices.Sorted(maps.Keys(w.Object.Params)) {
			b.WriteString(";" + k + "=" + w.Object.Params[k])
		}
		for _, k := range slices.Sorted(maps.Keys(w.Object.CreateOnly)) {
			b.WriteString(";create " + k + "=" + w.Object.CreateOnly[k])
		}
		if w.Object.StalePrefix != "" {
			b.WriteString(";sweep " + w.Object.StalePrefix)
		}
		return b.String()
	case w.Attr != nil:
		return strconv.Itoa(w.Attr.Notification)
	case w.Firmware != nil:
		return w.Firmware.Version
	}
	return ""
}

// ObjectAdd is an instance to create with its parameters (key included).
type ObjectAdd struct {
	Table  string            `json:"table"`
	Params map[string]string `json:"params"`
}

// Plan is the difference between a device's Wants and what is known of it:
// the operations that close it. Each non-empty list is one task.
type Plan struct {
	Set        []Change    `json:"set,omitempty"`
	Add        []ObjectAdd `json:"add,omitempty"`
	Delete     []string    `json:"delete,omitempty"`
	Attributes []AttrWant  `json:"attributes,omitempty"`
	// Refresh lists tables Duet holds no complete listing of (see
	// Listings) where one is needed: they are read (a Get of the table)
	// before an instance is decided missing, added or swept.
	Refresh []string `json:"refresh,omitempty"`
	// Undecided lists tables that were read for this policy, yet still
	// have no complete listing (the device's answer had an error for the
	// table): whether an instance is missing cannot be decided.
	Undecided []string `json:"undecided,omitempty"`
	// Missing lists instances that must exist but may not be created and
	// are not on the device: the device cannot comply.
	Missing []string `json:"missing,omitempty"`
	// Firmware: the device runs another version than the policy's.
	Firmware *FirmwareWant `json:"firmware,omitempty"`
}

// Empty reports whether nothing needs doing.
func (p Plan) Empty() bool {
	return len(p.Set) == 0 && len(p.Add) == 0 && len(p.Delete) == 0 && len(p.Attributes) == 0 &&
		len(p.Refresh) == 0 && len(p.Missing) == 0 && len(p.Undecided) == 0 && p.Firmware == nil
}

// Listings is what Duet knows of the completeness of one device's tables
// (store.FindTableListings): listed object path -> level (store.Listing*)
// and when it was listed. The cache alone cannot tell a complete table
// from a partial one: one Get of one parameter puts a row under the table.
type Listings map[string]store.TableListing

// Of is table's listing: that of the most specific listed path covering
// it ("Device.NAT." covers "Device.NAT.PortMapping."); the zero listing
// (store.ListingNone) when none does.
func (l Listings) Of(table string) store.TableListing {
	best, out := -1, store.TableListing{}
	for p, lv := range l {
		if len(p) > best && strings.HasPrefix(table, p) {
			best, out = len(p), lv
		}
	}
	return out
}

// ListingMaxAge is how old a complete listing may be for a policy to add
// an instance, or report one missing, on it: an older table is read again
// first, so what the device's own user created since (which no
// notification told, and CWMP has none) is found and adopted, not
// twinned. One read per decision to act, none for a device that
// complies.
const ListingMaxAge = time.Hour

// Diff computes the Plan for wants against known, the device's cached
// parameters (full paths; it must hold every path under each object
// Want's Table that the cache has). listings says which tables Duet holds
// a complete listing of: an instance is decided missing (added, reported,
// or swept as stale) only on one; otherwise the table is read first
// (Refresh); before an instance is added or reported missing, also when
// the listing is older than freshSince (zero: any age). attrsApplied says
// the policy's attributes were already
// applied at this revision. refreshed lists tables this policy read from
// the device since its last bootstrap and since an instance appeared in
// them: one still not listed is Undecided rather than read again and
// again.
func Diff(wants []Want, known map[string]string, listings Listings, freshSince time.Time, attrsApplied bool, refreshed []string) Plan {
	var p Plan
	for _, w := range wants {
		switch {
		case w.Firmware != nil:
			if w.Firmware.Current != w.Firmware.Version {
				fw := *w.Firmware
				p.Firmware = &fw
			}
		case w.Param != nil:
			cur, ok := known[w.Param.Path]
			if ok && cur == w.Param.Value {
				continue
			}
			c := Change{Path: w.Param.Path, Desired: w.Param.Value}
			if ok {
				c.Current = &cur
			}
			p.Set = append(p.Set, c)
		case w.Attr != nil:
			if !attrsApplied {
				p.Attributes = append(p.Attributes, *w.Attr)
			}
		case w.Object != nil:
			o := w.Object
			sweepOnly := o.KeyValue == "" && o.StalePrefix != ""
			inst := findInstance(known, o.Table, o.KeyParam, o.KeyValue)
			listing := listings.Of(o.Table)
			if !listed(known, listing.Level, o.Table, o.KeyParam) {
				// An instance found by its key is acted on without the
				// rest of the table; deciding one is absent needs it all.
				if inst != "" && !sweepOnly && o.StalePrefix == "" {
					if o.Present {
						p.Set = append(p.Set, instanceChanges(known, inst, o.Params)...)
					} else {
						p.Delete = appendOnce(p.Delete, inst)
					}
					continue
				}
				if slices.Contains(refreshed, o.Table) {
					p.Undecided = appendOnce(p.Undecided, o.Table)
				} else {
					p.Refresh = appendOnce(p.Refresh, o.Table)
				}
				continue
			}
			if o.StalePrefix != "" {
				for _, stale := range findInstances(known, o.Table, o.KeyParam, func(v string) bool {
					return strings.HasPrefix(v, o.StalePrefix) && (sweepOnly || v != o.KeyValue)
				}) {
					p.Delete = appendOnce(p.Delete, stale)
				}
			}
			switch {
			case sweepOnly:
			case inst == "" && o.Present && listing.ListedAt.Before(freshSince):
				// The table was listed, long ago: read it again before
				// acting on what is not there (the read worked before, so
				// refreshed does not stop it).
				p.Refresh = appendOnce(p.Refresh, o.Table)
			case inst == "" && o.Present && o.Create:
				params := map[string]string{}
				maps.Copy(params, o.CreateOnly)
				maps.Copy(params, o.Params)
				params[o.KeyParam] = o.KeyValue
				p.Add = append(p.Add, ObjectAdd{Table: o.Table, Params: params})
			case inst == "" && o.Present:
				p.Missing = append(p.Missing, o.Table+"["+o.KeyParam+"=="+o.KeyValue+"]")
			case inst != "" && !o.Present:
				p.Delete = appendOnce(p.Delete, inst)
			case inst != "":
				p.Set = append(p.Set, instanceChanges(known, inst, o.Params)...)
			}
		}
	}
	return p
}

// instanceChanges are the Sets that give instance inst the values params.
func instanceChanges(known map[string]string, inst string, params map[string]string) []Change {
	var out []Change
	for _, k := range slices.Sorted(maps.Keys(params)) {
		path := inst + k
		cur, ok := known[path]
		if ok && cur == params[k] {
			continue
		}
		c := Change{Path: path, Desired: params[k]}
		if ok {
			c.Current = &cur
		}
		out = append(out, c)
	}
	return out
}

// findInstance looks in known for the instance of table whose keyParam is
// keyValue and returns its path ("Device.X.3."), "" when the cache shows
// none (which says nothing of the device unless the table is listed).
func findInstance(known map[string]string, table, keyParam, keyValue string) string {
	found := findInstances(known, table, keyParam, func(v string) bool { return v == keyValue })
	if len(found) == 0 {
		return ""
	}
	// Two instances with one key value should not happen (the key is
	// unique); pick one deterministically.
	return found[0]
}

// listed reports whether the cache shows every instance of table with its
// keyParam, so that an instance absent from it is absent from the device:
// the table is listed with every value, or its instances are listed and
// each cached one has keyParam (a listing of instances caches their
// unique keys, which need not include keyParam).
func listed(known map[string]string, level int, table, keyParam string) bool {
	switch level {
	case store.ListingFull:
		return true
	case store.ListingInstances:
		insts := map[string]bool{}
		for path := range known {
			rest, ok := strings.CutPrefix(path, table)
			if !ok {
				continue
			}
			num, _, ok := strings.Cut(rest, ".")
			if !ok {
				continue
			}
			if _, err := strconv.ParseUint(num, 10, 32); err == nil {
				insts[table+num+"."] = true
			}
		}
		for inst := range insts {
			if _, ok := known[inst+keyParam]; !ok {
				return false
			}
		}
		return true
	}
	return false
}

// findInstances lists, sorted, the instances of table in known whose
// keyParam value satisfies match.
func findInstances(known map[string]string, table, keyParam string, match func(string) bool) []string {
	var found []string
	for path, v := range known {
		rest, ok := strings.CutPrefix(path, table)
		if !ok {
			continue
		}
		num, name, ok := strings.Cut(rest, ".")
		if !ok || name != keyParam || !match(v) {
			continue
		}
		if _, err := strconv.ParseUint(num, 10, 32); err != nil {
			continue
		}
		found = append(found, table+num+".")
	}
	slices.Sort(found)
	return found
}

func appendOnce(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}
