package usp

import (
	"testing"

	pkgusp "github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
	"github.com/duet-dm/duet/proto/usp/usprecord"
)

// FuzzHandleRecord feeds arbitrary bytes through the whole receive path
// (decode, session, dispatch, Notify handling): it must never panic.
// Seeded with one record of each kind. Run: go test -fuzz FuzzHandleRecord ./adapters/usp/
func FuzzHandleRecord(f *testing.F) {
	fx := newFixture(f, func(o *Options) { o.OnboardValueChange = []string{} })
	const eid = "os::00D09E-FUZZ"
	a := fx.agent(eid)
	ctrl := fx.ep.ID()
	seed := func(b []byte, err error) {
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	seed(pkgusp.MarshalWebSocketConnect(eid, ctrl))
	seed(pkgusp.MarshalMQTTConnect(eid, ctrl, usprecord.MQTTConnectRecord_V3_1_1, "usp/agent"))
	seed(pkgusp.MarshalSTOMPConnect(eid, ctrl, "/queue/agent"))
	seed(pkgusp.MarshalDisconnect(eid, ctrl, "bye", 7105))
	seed(pkgusp.MarshalMsgRecord(eid, ctrl, pkgusp.NewNotifyResp("x", "s")))
	seed(pkgusp.MarshalMsgRecord(eid, ctrl, pkgusp.NewRequest("n1", &uspmsg.Request{ReqType: &uspmsg.Request_Notify{Notify: &uspmsg.Notify{
		SendResp: true, Notification: &uspmsg.Notify_ValueChange_{ValueChange: &uspmsg.Notify_ValueChange{ParamPath: "Device.X", ParamValue: "1"}}}}})))
	seed(pkgusp.MarshalMsgRecord(eid, ctrl, pkgusp.NewError("e1", 7000, "x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		_ = fx.ep.HandleRecord(fx.mtp, Address{Reply: a.ID}, b)
	})
}
