package policy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/duet-dm/duet/controller/policy"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func TestFilterParamNeed(t *testing.T) {
	for src, want := range map[string]string{
		`online`:             "{false [] []}",
		`params["A"] == "x"`: "{false [A] []}",
		`"B" in params && params.C == "1" || has(params.D)`: "{false [B C D] []}",
		`params["A"] == "x" && params["A"] != "y"`:          "{false [A] []}",
		`params.exists(k, k == "x")`:                        "{true [] []}",
		`params[serial_number] == "x"`:                      "{true [] []}",
		`size(params) > 3`:                                  "{true [] []}",
		`params["A"] == "x" && params.size() > 0`:           "{true [] []}",
		`tags.exists(params, params == "x")`:                "{true [] []}",
	} {
		f, err := policy.CompileFilter(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		if got := fmt.Sprint(f.Params()); got != want {
			t.Errorf("%s: need %s, want %s", src, got, want)
		}
	}
}

// cacheParams stores parameter values as the registry would.
func cacheParams(t *testing.T, s *store.Store, values map[string]map[string]string) {
	t.Helper()
	var ps []store.Parameter
	for dev, m := range values {
		for p, v := range m {
			ps = append(ps, store.Parameter{DeviceID: dev, Path: p, Value: v, UpdatedAt: time.Now()})
		}
	}
	if err := s.UpsertParameters(context.Background(), ps); err != nil {
		t.Fatal(err)
	}
}

func TestMembersAndPreviewReadTheParameterCache(t *testing.T) {
	s, _ := storetest.Open(t)
	seed(t, s, 6)
	const model = "Device.DeviceInfo.ModelName"
	const inform = "Device.ManagementServer.PeriodicInformInterval"
	cacheParams(t, s, map[string]map[string]string{
		"dev-000": {model: "HG8245H", inform: "300"},
		"dev-001": {model: "HG8245H", inform: "86400", "Device.Other": "x"},
		"dev-002": {model: "F660"},
	})
	ctx := context.Background()
	for src, want := range map[string][]string{
		`params["` + model + `"] == "HG8245H"`:  {"dev-000", "dev-001"},
		`params.exists(k, k == "Device.Other")`: {"dev-001"},
		`"` + inform + `" in params && online`:  {"dev-000"},
		`!("` + model + `" in params)`:          {"dev-003", "dev-004", "dev-005"},
	} {
		p, err := policy.Members(ctx, s, store.Group{Filter: src}, "", 100)
		if err != nil || !slices.Equal(p.IDs, want) {
			t.Errorf("%s: %v %v, want %v", src, p.IDs, err, want)
		}
	}
	// dev-002..005 have no model cached: unevaluable, not members.
	if p, _ := policy.Members(ctx, s, store.Group{Filter: `params["` + model + `"] != "HG8245H"`}, "", 100); !slices.Equal(p.IDs, []string{"dev-002"}) || p.Unevaluable != 3 {
		t.Errorf("missing values: %+v", p)
	}

	spec, err := policy.ValidateSpec("parameters", json.RawMessage(`{"parameters":[{"path":"`+inform+`","value":"300"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	pv, err := policy.Preview(ctx, s, store.Group{Filter: `params["` + model + `"] == "HG8245H"`}, spec, policy.Env{}, "", 100)
	if err != nil || len(pv.Devices) != 2 {
		t.Fatalf("preview: %+v %v", pv, err)
	}
	if d := pv.Devices[0]; d.DeviceID != "dev-000" || len(d.Changes) != 0 {
		t.Errorf("compliant device: %+v", d)
	}
	if d := pv.Devices[1]; d.DeviceID != "dev-001" || len(d.Changes) != 1 || d.Changes[0].Current == nil || *d.Changes[0].Current != "86400" || d.Changes[0].Desired != "300" {
		t.Errorf("drifted device: %+v", d)
	}
}
