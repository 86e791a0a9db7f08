package controller

import (
	"slices"
	"testing"

	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// TestWhatAReadLists: a Get lists the partial paths it read whole without
// error; a depth limit, a wildcard or a single parameter list nothing; a
// GetInstances only with every level and no error.
func TestWhatAReadLists(t *testing.T) {
	get := &duetv1.GetRequest{Paths: []string{"Device.NAT.PortMapping.", "Device.LocalAgent.Controller.1.EndpointID",
		"Device.WiFi.SSID.*.", "Device.LocalAgent.Subscription.", "Device.X."}}
	res := &duetv1.GetResult{Errors: []*duetv1.ParamError{{Path: "Device.X."}}}
	listed, failed := listedByGet(get, res)
	if !slices.Equal(listed, []string{"Device.NAT.PortMapping.", "Device.LocalAgent.Subscription."}) || !slices.Equal(failed, []string{"Device.X."}) {
		t.Fatalf("get: listed %v, failed %v", listed, failed)
	}
	get.MaxDepth = 1
	if listed, _ := listedByGet(get, res); len(listed) != 0 {
		t.Fatalf("a depth-limited get listed %v", listed)
	}

	gi := &duetv1.GetInstancesRequest{Paths: []string{"Device.NAT.PortMapping."}}
	keyed := &duetv1.GetInstancesResult{Instances: []*duetv1.Instance{{Path: "Device.NAT.PortMapping.1.", UniqueKeys: map[string]string{"Alias": "a"}}}}
	if got := listedByInstances(gi, keyed); !slices.Equal(got, []string{"Device.NAT.PortMapping."}) {
		t.Fatalf("get_instances: %v", got)
	}
	refused := &duetv1.GetInstancesResult{Errors: []*duetv1.ParamError{{Path: "Device.NAT.PortMapping."}}}
	if got := listedByInstances(gi, refused); len(got) != 0 {
		t.Fatalf("get_instances with an error listed %v", got)
	}
	gi.FirstLevelOnly = true
	if got := listedByInstances(gi, keyed); len(got) != 0 {
		t.Fatalf("first level only listed %v", got)
	}
}
