package policy_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/store"
)

const subs = "Device.LocalAgent.Subscription."

// planJSON is a Plan in a form that compares and prints well.
func planJSON(t *testing.T, p policy.Plan) string {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func portMapping(present, create bool, params map[string]string) policy.Want {
	return policy.Want{Object: &policy.ObjectWant{Table: "Device.NAT.PortMapping.", KeyParam: "Alias", KeyValue: "voip-sip",
		Present: present, Create: create, Params: params}}
}

// full lists the tables of these tests with every value.
var full = policy.Listings{"Device.NAT.PortMapping.": listedNow(store.ListingFull), subs: listedNow(store.ListingFull),
	"Device.LocalAgent.Controller.": listedNow(store.ListingFull)}

// listedNow is a listing of the given level taken now; freshSince is the
// Diff argument that accepts it.
func listedNow(level int) store.TableListing {
	return store.TableListing{Level: level, ListedAt: time.Now()}
}

var freshSince = time.Now().Add(-time.Minute)

func TestDiffObjects(t *testing.T) {
	existing := map[string]string{
		"Device.NAT.PortMapping.1.Alias":        "web",
		"Device.NAT.PortMapping.1.Enable":       "true",
		"Device.NAT.PortMapping.3.Alias":        "voip-sip",
		"Device.NAT.PortMapping.3.Enable":       "false",
		"Device.NAT.PortMapping.3.ExternalPort": "5060",
	}
	hold := map[string]string{"Enable": "true", "ExternalPort": "5060", "Description": "SIP"}
	for _, c := range []struct {
		name      string
		want      policy.Want
		known     map[string]string
		listings  policy.Listings
		refreshed []string
		plan      string
	}{
		{"existing instance: only differing params are set", portMapping(true, true, hold), existing, nil, nil,
			`{"set":[{"path":"Device.NAT.PortMapping.3.Description","current":null,"desired":"SIP"},{"path":"Device.NAT.PortMapping.3.Enable","current":"false","desired":"true"}]}`},
		{"missing instance of a listed table is added with its key", portMapping(true, true, hold), map[string]string{"Device.NAT.PortMapping.1.Alias": "web"}, full, nil,
			`{"add":[{"table":"Device.NAT.PortMapping.","params":{"Alias":"voip-sip","Description":"SIP","Enable":"true","ExternalPort":"5060"}}]}`},
		{"a table listed empty is known to be empty", portMapping(true, true, nil), map[string]string{}, full, []string{"Device.NAT.PortMapping."},
			`{"add":[{"table":"Device.NAT.PortMapping.","params":{"Alias":"voip-sip"}}]}`},
		{"a table never read is read first", portMapping(true, true, hold), map[string]string{"Device.NAT.PortMappingNumberOfEntries": "0"}, nil, nil,
			`{"refresh":["Device.NAT.PortMapping."]}`},
		{"an absent instance found is deleted", portMapping(false, false, nil), existing, nil, nil,
			`{"delete":["Device.NAT.PortMapping.3."]}`},
		{"an absent instance not found in a listed table needs nothing", portMapping(false, false, nil), map[string]string{"Device.NAT.PortMapping.1.Alias": "web"}, full, nil,
			`{}`},
		{"a missing instance that may not be created is missing", portMapping(true, false, hold), map[string]string{"Device.NAT.PortMapping.1.Alias": "web"}, full, nil,
			`{"missing":["Device.NAT.PortMapping.[Alias==voip-sip]"]}`},
		// Issue 12 §3: one cached row under a table is not a listing of it.
		{"a partial cache is read before adding", portMapping(true, true, hold), map[string]string{"Device.NAT.PortMapping.1.Alias": "web"}, nil, nil,
			`{"refresh":["Device.NAT.PortMapping."]}`},
		{"a partial cache is read before reporting missing", portMapping(true, false, hold), map[string]string{"Device.NAT.PortMapping.1.Enable": "true"}, nil, nil,
			`{"refresh":["Device.NAT.PortMapping."]}`},
		{"an absent instance not found in a partial cache is read for", portMapping(false, false, nil), map[string]string{"Device.NAT.PortMapping.1.Alias": "web"}, nil, nil,
			`{"refresh":["Device.NAT.PortMapping."]}`},
		{"read for the policy and still not listed: undecided, not read again", portMapping(true, true, hold), map[string]string{}, nil, []string{"Device.NAT.PortMapping."},
			`{"undecided":["Device.NAT.PortMapping."]}`},
		{"a listing of instances with every key cached decides", portMapping(true, true, nil), map[string]string{"Device.NAT.PortMapping.1.Alias": "web"},
			policy.Listings{"Device.NAT.PortMapping.": listedNow(store.ListingInstances)}, nil,
			`{"add":[{"table":"Device.NAT.PortMapping.","params":{"Alias":"voip-sip"}}]}`},
		{"a listing of instances with a key not cached is read", portMapping(true, true, nil),
			map[string]string{"Device.NAT.PortMapping.1.Alias": "web", "Device.NAT.PortMapping.2.Enable": "true"},
			policy.Listings{"Device.NAT.PortMapping.": listedNow(store.ListingInstances)}, nil,
			`{"refresh":["Device.NAT.PortMapping."]}`},
		{"an ancestor read whole lists the table", portMapping(true, true, nil), map[string]string{}, policy.Listings{"Device.NAT.": listedNow(store.ListingFull)}, nil,
			`{"add":[{"table":"Device.NAT.PortMapping.","params":{"Alias":"voip-sip"}}]}`},
		// An instance created on the device after a listing, unknown to
		// Duet: an old listing is read again before adding or reporting
		// missing, not before doing nothing.
		{"an old listing is read again before adding", portMapping(true, true, hold), map[string]string{"Device.NAT.PortMapping.1.Alias": "web"},
			policy.Listings{"Device.NAT.PortMapping.": {Level: store.ListingFull, ListedAt: time.Now().Add(-2 * time.Hour)}}, []string{"Device.NAT.PortMapping."},
			`{"refresh":["Device.NAT.PortMapping."]}`},
		{"an old listing is read again before reporting missing", portMapping(true, false, hold), map[string]string{"Device.NAT.PortMapping.1.Alias": "web"},
			policy.Listings{"Device.NAT.PortMapping.": {Level: store.ListingFull, ListedAt: time.Now().Add(-2 * time.Hour)}}, nil,
			`{"refresh":["Device.NAT.PortMapping."]}`},
		{"an old listing decides that nothing needs deleting", portMapping(false, false, nil), map[string]string{"Device.NAT.PortMapping.1.Alias": "web"},
			policy.Listings{"Device.NAT.PortMapping.": {Level: store.ListingFull, ListedAt: time.Now().Add(-2 * time.Hour)}}, nil,
			`{}`},
		{"a more specific incomplete listing wins", portMapping(true, true, nil), map[string]string{},
			policy.Listings{"Device.": listedNow(store.ListingFull), "Device.NAT.PortMapping.": listedNow(store.ListingNone)}, nil,
			`{"refresh":["Device.NAT.PortMapping."]}`},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := planJSON(t, policy.Diff([]policy.Want{c.want}, c.known, c.listings, freshSince, false, c.refreshed))
			if got != c.plan {
				t.Fatalf("plan\n %s\nwant\n %s", got, c.plan)
			}
		})
	}
}

func TestDiffCreateOnlyIsNotCompared(t *testing.T) {
	w := policy.Want{Object: &policy.ObjectWant{Table: subs, KeyParam: "ID", KeyValue: "duet-pol_1-aaa", Present: true, Create: true,
		Params:     map[string]string{"Enable": "true"},
		CreateOnly: map[string]string{"ReferenceList": "Device.A,Device.B"}}}
	// The agent may spell the list its own way; it is never Set again.
	known := map[string]string{subs + "2.ID": "duet-pol_1-aaa", subs + "2.Enable": "true", subs + "2.ReferenceList": "Device.A, Device.B"}
	if p := policy.Diff([]policy.Want{w}, known, nil, freshSince, false, nil); !p.Empty() {
		t.Fatalf("plan %s, want empty", planJSON(t, p))
	}
	// Added, it carries the list.
	p := policy.Diff([]policy.Want{w}, map[string]string{}, full, freshSince, false, []string{subs})
	if got, want := planJSON(t, p), `{"add":[{"table":"`+subs+`","params":{"Enable":"true","ID":"duet-pol_1-aaa","ReferenceList":"Device.A,Device.B"}}]}`; got != want {
		t.Fatalf("plan %s, want %s", got, want)
	}
}

func TestDiffStalePrefix(t *testing.T) {
	known := map[string]string{
		subs + "1.ID":        "cpe-1", // the agent's own
		subs + "2.ID":        "duet-pol_1-aaa",
		subs + "3.ID":        "duet-pol_1-bbb", // this policy, an older list
		subs + "4.ID":        "duet-pol_12-ccc",
		subs + "4.Enable":    "true",
		subs + "5.Recipient": "Device.LocalAgent.Controller.1",
	}
	current := policy.Want{Object: &policy.ObjectWant{Table: subs, KeyParam: "ID", KeyValue: "duet-pol_1-aaa", Present: true, Create: true,
		StalePrefix: "duet-pol_1-"}}
	if got, want := planJSON(t, policy.Diff([]policy.Want{current}, known, full, freshSince, false, nil)), `{"delete":["`+subs+`3."]}`; got != want {
		t.Fatalf("plan %s, want %s", got, want)
	}
	// The current one missing: added, and the stale one still deleted.
	delete(known, subs+"2.ID")
	if got, want := planJSON(t, policy.Diff([]policy.Want{current}, known, full, freshSince, false, nil)),
		`{"add":[{"table":"`+subs+`","params":{"ID":"duet-pol_1-aaa"}}],"delete":["`+subs+`3."]}`; got != want {
		t.Fatalf("plan %s, want %s", got, want)
	}
	// Sweep only: every instance of the policy goes.
	known[subs+"2.ID"] = "duet-pol_1-aaa"
	sweep := policy.Want{Object: &policy.ObjectWant{Table: subs, KeyParam: "ID", StalePrefix: "duet-pol_1-"}}
	if got, want := planJSON(t, policy.Diff([]policy.Want{sweep}, known, full, freshSince, false, nil)), `{"delete":["`+subs+`2.","`+subs+`3."]}`; got != want {
		t.Fatalf("plan %s, want %s", got, want)
	}
	if got, want := sweep.Key(), "objects "+subs+"[ID^=duet-pol_1-]"; got != want {
		t.Fatalf("key %q, want %q", got, want)
	}
	// A table never read is read first, for a sweep too.
	if got, want := planJSON(t, policy.Diff([]policy.Want{sweep}, map[string]string{}, nil, freshSince, false, nil)), `{"refresh":["`+subs+`"]}`; got != want {
		t.Fatalf("plan %s, want %s", got, want)
	}
	// Nothing of the policy's left: nothing to do.
	if p := policy.Diff([]policy.Want{sweep}, map[string]string{subs + "1.ID": "cpe-1"}, full, freshSince, false, nil); !p.Empty() {
		t.Fatalf("plan %s, want empty", planJSON(t, p))
	}
}

func TestDiffParamsAndAttributes(t *testing.T) {
	wants := []policy.Want{
		{Param: &policy.ParamWant{Path: "Device.X", Value: "1"}},
		{Param: &policy.ParamWant{Path: "Device.Y", Value: "2"}},
		{Attr: &policy.AttrWant{Path: "Device.Z", Notification: 2}},
	}
	known := map[string]string{"Device.X": "1", "Device.Y": "3"}
	if got, want := planJSON(t, policy.Diff(wants, known, nil, freshSince, false, nil)),
		`{"set":[{"path":"Device.Y","current":"3","desired":"2"}],"attributes":[{"path":"Device.Z","notification":2}]}`; got != want {
		t.Fatalf("plan %s, want %s", got, want)
	}
	if got, want := planJSON(t, policy.Diff(wants, known, nil, freshSince, true, nil)), `{"set":[{"path":"Device.Y","current":"3","desired":"2"}]}`; got != want {
		t.Fatalf("attributes applied: plan %s, want %s", got, want)
	}
}

func TestWantKeyValue(t *testing.T) {
	a := portMapping(true, true, map[string]string{"Enable": "true"})
	b := portMapping(true, true, map[string]string{"Enable": "false"})
	gone := portMapping(false, false, nil)
	if a.Key() != b.Key() || a.Key() != gone.Key() {
		t.Fatalf("keys %q %q %q", a.Key(), b.Key(), gone.Key())
	}
	vals := fmt.Sprint(a.Value(), " | ", b.Value(), " | ", gone.Value())
	if vals != "present;Enable=true | present;Enable=false | absent" {
		t.Fatalf("values %s", vals)
	}
}
