package controller

import (
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// DeviceSearchKeys are the query parameters of a device search (GET
// /api/v1/devices, the console's device list): ParseDeviceSearch reads
// them. "param" may be given any number of times; every other key once.
var DeviceSearchKeys = []string{"q", "protocol", "online", "manufacturer", "product_class", "software_version",
	"last_seen_after", "last_seen_before", "tag", "param", "sort", "cursor", "limit", "count"}

// DeviceSearch is a parsed device search.
type DeviceSearch struct {
	// Filter holds the conditions, sort, cursor and limit (0: the
	// store's default).
	Filter store.DeviceFilter
	// Count: the caller asked for the number of matches (count=true).
	Count bool
}

// ParseDeviceSearch reads a device search from q, the one parser both
// HTTP surfaces use, so a search means the same in the API and the
// console. An invalid value is CodeInvalidArgument naming its parameter
// ("query parameter \"online\": ..."); a bad param condition keeps its
// code (invalid_path, with the position). Keys not in DeviceSearchKeys
// are ignored here: the API refuses them before, the console's form has
// its own.
func ParseDeviceSearch(q url.Values) (DeviceSearch, error) {
	var s DeviceSearch
	f := &s.Filter
	f.Manufacturer, f.ProductClass, f.SoftwareVersion = q.Get("manufacturer"), q.Get("product_class"), q.Get("software_version")
	if v := q.Get("protocol"); v != "" {
		p, err := devicemodel.ParseProtocol(v)
		if err != nil {
			return s, badSearchParam("protocol", "must be cwmp or usp")
		}
		f.Protocol = p
	}
	if v := q.Get("online"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return s, badSearchParam("online", "must be true or false")
		}
		f.Online = &b
	}
	for _, x := range []struct {
		name string
		dst  *time.Time
	}{{"last_seen_after", &f.LastSeenAfter}, {"last_seen_before", &f.LastSeenBefore}} {
		if v := q.Get(x.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				return s, badSearchParam(x.name, "must be an RFC 3339 time (2026-01-02T15:04:05Z)")
			}
			*x.dst = t
		}
	}
	if v := q.Get("tag"); v != "" {
		if err := store.CheckTag(v); err != nil {
			return s, badSearchParam("tag", devicemodel.ErrorMessage(err))
		}
		f.Tag = v
	}
	if err := store.CheckQuery(q.Get("q")); err != nil {
		return s, badSearchParam("q", devicemodel.ErrorMessage(err))
	}
	f.Query = q.Get("q")
	if err := parseSearchConditions(f, q["param"]); err != nil {
		return s, err
	}
	if v := q.Get("sort"); v != "" {
		o, err := store.ParseDeviceSort(v)
		if err != nil {
			return s, badSearchParam("sort", devicemodel.ErrorMessage(err))
		}
		f.Sort = o
	}
	if v := q.Get("cursor"); v != "" {
		after, key, err := store.DecodeDeviceCursor(f.Sort, v)
		if err != nil {
			return s, badSearchParam("cursor", devicemodel.ErrorMessage(err)+"; pass next_cursor from the previous page, with the same sort")
		}
		f.After, f.AfterKey = after, key
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > store.MaxPageSize {
			return s, badSearchParam("limit", "must be an integer from 1 to "+strconv.Itoa(store.MaxPageSize))
		}
		f.Limit = n
	}
	if v := q.Get("count"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return s, badSearchParam("count", "must be true or false")
		}
		s.Count = b
	}
	return s, nil
}

func parseSearchConditions(f *store.DeviceFilter, vs []string) error {
	if n := len(vs); n > MaxParamConditions {
		// Each condition is a join PostgreSQL plans; 100 took 12 s and 300
		// over two minutes (issue 15 §8).
		return badSearchParam("param", fmt.Sprintf("%d conditions; at most %d", n, MaxParamConditions))
	}
	for i, v := range vs {
		c, err := store.ParseParamCondition(v)
		if err != nil {
			// The code stays: invalid_path (with the position) for a bad path.
			return devicemodel.Errorf(devicemodel.ErrorCode(err), "query parameter \"param\" #%d: %s", i+1, devicemodel.ErrorMessage(err))
		}
		f.Params = append(f.Params, c)
	}
	return nil
}

func badSearchParam(name, why string) error {
	return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "query parameter %q: %s", name, why)
}

// BulkFilterOf is the task batch filter (POST /api/v1/tasks) selecting
// the devices a search finds: its conditions, without sort or paging.
func BulkFilterOf(f store.DeviceFilter) BulkFilter {
	b := BulkFilter{Protocol: string(f.Protocol), Online: f.Online, Manufacturer: f.Manufacturer, ProductClass: f.ProductClass,
		SoftwareVersion: f.SoftwareVersion, Tag: f.Tag, Q: f.Query}
	if !f.LastSeenAfter.IsZero() {
		t := f.LastSeenAfter
		b.LastSeenAfter = &t
	}
	if !f.LastSeenBefore.IsZero() {
		t := f.LastSeenBefore
		b.LastSeenBefore = &t
	}
	for _, c := range f.Params {
		b.Param = append(b.Param, c.String())
	}
	return b
}
