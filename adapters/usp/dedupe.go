package usp

import (
	"context"
	"maps"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// One happening, one event (issue 11 §4). An agent sends one Boot! per
// Event subscription that matches Device.Boot! (TR-181 Device.Boot!, TR-369 "Notify"):
// real agents ship a factory subscription of their own besides Duet's, so
// one reboot arrives twice with different msg_ids. The second is answered
// (every Notify that asks gets its NotifyResp) but not published.

// bootDedupWindow bounds how long a Boot! is taken for a copy of the last
// one. A new MTP connection (a Connect record) also ends it.
const bootDedupWindow = 2 * time.Minute

type bootHappening struct {
	key string
	at  time.Time
}

// bootKey identifies the boot a Boot! reports: its CommandKey, Cause,
// FirmwareUpdated and every other argument (the ParameterMap of boot
// parameters), which are the same in each copy of one boot.
func bootKey(ev *uspmsg.Notify_Event) string {
	args := ev.GetParams()
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(args)) {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(args[k])
		b.WriteByte(0)
	}
	return b.String()
}

// seenBoot reports whether n is a copy of the Boot! last published for
// eid, and remembers it when it is not.
func (e *Endpoint) seenBoot(eid string, n *uspmsg.Notify) bool {
	ev := n.GetEvent()
	if ev == nil || ev.GetObjPath()+ev.GetEventName() != "Device.Boot!" {
		return false
	}
	key := bootKey(ev)
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if prev, ok := e.bootSeen.get(eid); ok && prev.key == key && now.Sub(prev.at) < bootDedupWindow {
		return true
	}
	e.bootSeen.put(eid, bootHappening{key: key, at: now})
	return false
}

// forgetBoot ends Boot! de-duplication for eid.
func (e *Endpoint) forgetBoot(eid string) {
	e.mu.Lock()
	e.bootSeen.remove(eid)
	e.mu.Unlock()
}

// answerDuplicate answers a Notify that repeats a happening already
// published: after the events queued before it on the agent's shard, so
// the agent is acknowledged only once the original is stored or failed.
func (e *Endpoint) answerDuplicate(mtp MTP, from Address, eid, msgID string, st *notifyState, n *uspmsg.Notify) {
	metricNotifications.WithLabelValues("duplicate").Inc()
	if !e.submit(eid, func(context.Context) {
		e.mu.Lock()
		st.answered = true
		e.mu.Unlock()
		if n.GetSendResp() {
			e.sendNotifyResp(mtp, from, eid, msgID, n.GetSubscriptionId())
		}
	}) {
		e.mu.Lock()
		e.notifies.remove(eid + "\x00" + msgID)
		e.mu.Unlock()
	}
}

// announce publishes s's online event: once per session, and again only
// when onboarding read identity facts that differ from those announced
// (a firmware update). facts may be nil (none read). It reports whether
// it published.
func (e *Endpoint) announce(s *session, facts *duetv1.DeviceIdentity) bool {
	e.mu.Lock()
	if s.gone || (s.announced && (facts == nil || proto.Equal(facts, s.facts))) {
		e.mu.Unlock()
		return false
	}
	s.announced = true
	if facts != nil {
		s.facts = proto.Clone(facts).(*duetv1.DeviceIdentity)
	}
	mtp, addr := s.mtp, s.addr
	e.mu.Unlock()
	ev := &duetv1.Event{Kind: &duetv1.Event_Online{Online: &duetv1.Online{}}}
	if facts != nil {
		ev.Device = proto.Clone(facts).(*duetv1.DeviceIdentity)
	}
	e.publish(s.eid, mtp, addr, ev, nil)
	return true
}
