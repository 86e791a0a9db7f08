package controller_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// TestParseDeviceSearch: the one search parser of the API and the
// console reads every filter, and names the parameter of a bad value.
func TestParseDeviceSearch(t *testing.T) {
	q := url.Values{"q": {"hg"}, "protocol": {"usp"}, "online": {"false"}, "manufacturer": {"ACME"},
		"product_class": {"PC1"}, "software_version": {"1.2"}, "last_seen_after": {"2026-01-02T15:04:05Z"},
		"last_seen_before": {"2026-02-02T15:04:05Z"}, "tag": {"lab"},
		"param": {"Device.DeviceInfo.ModelName:eq:HG", "Device.X.Y:gt:3"}, "sort": {"-last_seen"}, "limit": {"7"}, "count": {"true"}}
	s, err := controller.ParseDeviceSearch(q)
	if err != nil {
		t.Fatal(err)
	}
	f := s.Filter
	if f.Query != "hg" || f.Protocol != devicemodel.ProtocolUSP || f.Online == nil || *f.Online || f.Manufacturer != "ACME" ||
		f.ProductClass != "PC1" || f.SoftwareVersion != "1.2" || f.LastSeenAfter.IsZero() || f.LastSeenBefore.IsZero() ||
		f.Tag != "lab" || len(f.Params) != 2 || f.Sort != (store.DeviceSort{Field: "last_seen", Desc: true}) || f.Limit != 7 || !s.Count {
		t.Fatalf("parsed %+v count %v", f, s.Count)
	}
	// The batch filter of the same search selects the same devices.
	b := controller.BulkFilterOf(f)
	if b.Q != "hg" || b.Protocol != "usp" || b.Tag != "lab" || len(b.Param) != 2 || b.Param[1] != "Device.X.Y:gt:3" || b.LastSeenAfter == nil {
		t.Fatalf("bulk filter %+v", b)
	}
	for query, want := range map[string]string{
		"online=maybe":              `"online"`,
		"protocol=snmp":             `"protocol"`,
		"limit=0":                   `"limit"`,
		"cursor=%25%25":             `"cursor"`,
		"tag=a%20b":                 `"tag"`,
		"last_seen_after=yesterday": `"last_seen_after"`,
		"count=often":               `"count"`,
		"sort=colour":               `"sort"`,
		"param=Device..X:eq:1":      "position 7",
	} {
		v, err := url.ParseQuery(query)
		if err != nil {
			t.Fatal(err)
		}
		_, err = controller.ParseDeviceSearch(v)
		if err == nil || !strings.Contains(devicemodel.ErrorMessage(err), want) {
			t.Errorf("%s: %v, want an error with %s", query, err, want)
		}
	}
	many := url.Values{}
	for range controller.MaxParamConditions + 1 {
		many.Add("param", "Device.X:eq:1")
	}
	if _, err := controller.ParseDeviceSearch(many); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
		t.Fatalf("too many conditions: %v", err)
	}
}
