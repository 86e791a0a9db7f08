package agent_test

import (
	"testing"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// FuzzHandleRecord: whatever a Controller sends, the agent answers with at
// most one well-formed record addressed back to it, and never panics.
func FuzzHandleRecord(f *testing.F) {
	a0, _ := agent.New(agent.Config{SerialNumber: "FZ", ControllerID: ctrlID})
	eid := a0.EndpointID()
	a0.Close()
	for _, m := range []*uspmsg.Msg{
		usp.NewGet("1", []string{"Device.", "Device.WiFi.SSID.*.SSID", "Device.LocalAgent.Controller.1.BootParameter."}, 2),
		usp.NewSet("2", true, []usp.ObjectSettings{{Path: "Device.WiFi.SSID.*.", Params: []usp.ParamSetting{{Param: "SSID", Value: "x", Required: true}}}}),
		usp.NewAdd("3", false, []usp.ObjectSettings{{Path: "Device.LocalAgent.Subscription.", Params: []usp.ParamSetting{{Param: "Enable", Value: "true"}, {Param: "ReferenceList", Value: "Device."}}}}),
		usp.NewDelete("4", true, []string{"Device.NAT.PortMapping.*.", "Device.LocalAgent.Controller.1."}),
		usp.NewOperate("5", "Device.IP.Diagnostics.IPPing()", "k", true, map[string]string{"Host": "h"}),
		usp.NewGetSupportedDM("6", []string{"Device.LocalAgent."}, usp.GSDMOptions{FirstLevelOnly: true, ReturnParams: true}),
		usp.NewGetInstances("7", []string{"Device.LocalAgent.Controller.*.BootParameter."}, false),
	} {
		b, err := usp.MarshalMsgRecord(ctrlID, eid, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := agent.New(agent.Config{SerialNumber: "FZ", ControllerID: ctrlID, OutgoingQueue: 1024})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		replies := a.HandleRecord(b)
		if len(replies) > 1 {
			t.Fatalf("%d replies", len(replies))
		}
		for _, r := range replies {
			if _, err := usp.ParseRecord(r, ctrlID); err != nil {
				t.Fatalf("agent sent a bad record: %v", err)
			}
		}
	})
}
