package agent_test

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/duet-dm/duet/pkg/sim/agent"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

func unique(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// wireCtl is the test-side Controller on a real MTP: records it receives
// arrive on recv; send delivers one to the agent.
type wireCtl struct {
	t    *testing.T
	eid  string // the agent's
	recv chan []byte
	send func(rec []byte)
	n    int
}

func (w *wireCtl) next() *usp.Record {
	w.t.Helper()
	select {
	case b := <-w.recv:
		r, err := usp.ParseRecord(b, ctrlID)
		if err != nil {
			w.t.Fatalf("controller got a bad record: %v", err)
		}
		if r.FromID != w.eid {
			w.t.Fatalf("record from %q, want %q", r.FromID, w.eid)
		}
		return r
	case <-time.After(10 * time.Second):
		w.t.Fatal("controller received nothing")
	}
	return nil
}

// request sends m and returns the response, skipping nothing: the next
// record must be the answer.
func (w *wireCtl) request(m *uspmsg.Msg) *usp.Record {
	w.t.Helper()
	b, err := usp.MarshalMsgRecord(ctrlID, w.eid, m)
	if err != nil {
		w.t.Fatal(err)
	}
	w.send(b)
	r := w.next()
	if r.Kind != usp.RecordMsg || r.MsgID != m.GetHeader().GetMsgId() {
		w.t.Fatalf("want the answer to %s, got %v %s", m.GetHeader().GetMsgId(), r.Kind, r.MsgID)
	}
	return r
}

func (w *wireCtl) id() string { w.n++; return fmt.Sprintf("ctl-%d", w.n) }

// exercise runs the common scenario over any MTP: Connect record first, a
// Get, a Boot! subscription, Reboot() with reconnect + Connect record +
// Boot! carrying our CommandKey, and the NotifyResp ending its retries.
func exercise(t *testing.T, w *wireCtl, a *agent.Agent, c *agent.Client, connectKind usp.RecordKind, checkConnect func(*usp.Record)) {
	t.Helper()
	r := w.next()
	if r.Kind != connectKind {
		t.Fatalf("first record is %v, want %v (R-MTP.6)", r.Kind, connectKind)
	}
	checkConnect(r)

	r = w.request(usp.NewGet(w.id(), []string{"Device.DeviceInfo.SerialNumber"}, 0))
	if v := r.Msg.GetBody().GetResponse().GetGetResp().GetReqPathResults()[0].GetResolvedPathResults()[0].GetResultParams()["SerialNumber"]; v == "" {
		t.Fatalf("get: %v", r.Msg)
	}
	r = w.request(usp.NewAdd(w.id(), false, []usp.ObjectSettings{{Path: "Device.LocalAgent.Subscription.", Params: []usp.ParamSetting{
		{Param: "ID", Value: "boot"}, {Param: "Enable", Value: "true"}, {Param: "NotifType", Value: "Event"},
		{Param: "ReferenceList", Value: "Device.Boot!"}, {Param: "Persistent", Value: "true"}, {Param: "NotifRetry", Value: "true"},
	}}}))
	if r.Msg.GetBody().GetResponse().GetAddResp() == nil {
		t.Fatalf("add: %v", r.Msg)
	}
	r = w.request(usp.NewOperate(w.id(), "Device.Reboot()", "reboot-7", true, nil))
	if r.Msg.GetBody().GetResponse().GetOperateResp() == nil {
		t.Fatalf("operate: %v", r.Msg)
	}
	r = w.next()
	if r.Kind != connectKind {
		t.Fatalf("after reboot: %v, want the Connect record again", r.Kind)
	}
	r = w.next()
	ev := r.Msg.GetBody().GetRequest().GetNotify().GetEvent()
	if ev.GetEventName() != "Boot!" || ev.GetParams()["CommandKey"] != "reboot-7" || ev.GetParams()["Cause"] != "RemoteReboot" {
		t.Fatalf("boot: %v", r.Msg)
	}
	b, _ := usp.MarshalMsgRecord(ctrlID, w.eid, usp.NewNotifyResp(r.MsgID, "boot"))
	w.send(b)
	checkFor(t, 5*time.Second, func() error {
		if a.PendingNotifies() != 0 {
			return errors.New("Boot! still pending after NotifyResp")
		}
		return nil
	})
	if c.Connects() != 2 {
		t.Fatalf("connects %d, want 2", c.Connects())
	}
	// Close says goodbye first (R-MTP.7). A Boot! retry sent before our
	// NotifyResp arrived may come first.
	bootID := r.MsgID
	c.Close()
	for {
		r := w.next()
		if r.Kind == usp.RecordMsg && r.MsgID == bootID {
			continue
		}
		if r.Kind != usp.RecordDisconnect || r.DisconnectReason != "Shutdown" {
			t.Fatalf("after Close: %v %q", r.Kind, r.DisconnectReason)
		}
		break
	}
}

func newWireAgent(t *testing.T, serial, mtp string) *agent.Agent {
	t.Helper()
	a, err := agent.New(agent.Config{SerialNumber: serial, ControllerID: ctrlID, MTPProtocol: mtp, NoFactorySubscription: true,
		RetryMinWait: 50 * time.Millisecond, RetryMultiplier: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// noLeak checks that the goroutine count returns to base.
func noLeak(t *testing.T, base int) {
	t.Helper()
	checkFor(t, 5*time.Second, func() error {
		if n := runtime.NumGoroutine(); n > base {
			buf := make([]byte, 1<<16)
			return fmt.Errorf("%d goroutines left:\n%s", n-base, buf[:runtime.Stack(buf, true)])
		}
		return nil
	})
}

func numGoroutines() int { return runtime.NumGoroutine() }
