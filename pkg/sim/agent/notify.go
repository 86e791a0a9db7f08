package agent

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// subscription is an enabled row of Device.LocalAgent.Subscription.{i}.
type subscription struct {
	id        string
	notifType string
	refs      []string
	retry     bool
}

func (a *Agent) subscriptions(kind string) []subscription {
	var out []subscription
	for _, row := range a.m.instances("Device.LocalAgent.Subscription.") {
		v := a.m.values
		if v[row+"Enable"] != "true" || v[row+"NotifType"] != kind {
			continue
		}
		s := subscription{id: v[row+"ID"], notifType: kind, retry: v[row+"NotifRetry"] == "true"}
		for _, r := range strings.Split(v[row+"ReferenceList"], ",") {
			if r = strings.TrimSpace(r); r != "" {
				s.refs = append(s.refs, r)
			}
		}
		out = append(out, s)
	}
	return out
}

// matching returns the subscriptions of kind whose ReferenceList covers
// path: the path itself, or an object path above it (TR-181 Device.LocalAgent.Subscription.{i}.); "*"
// works in both.
func (a *Agent) matching(kind, path string) []subscription {
	var out []subscription
	for _, s := range a.subscriptions(kind) {
		for _, r := range s.refs {
			if a.m.matchPrefix(r, path) {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// commit installs after as the model and raises the notifications the
// changes call for, whoever made them (TR-369 "Notify": USP does not suppress
// changes the Controller caused).
func (a *Agent) commit(before, after *model) {
	a.m = after
	var changed []string
	for p, v := range after.values {
		if old, ok := before.values[p]; ok && old != v {
			changed = append(changed, p)
		}
	}
	sort.Strings(changed)
	for _, p := range changed {
		for _, s := range a.matching("ValueChange", p) {
			a.sendNotify(s.id, s.retry, &uspmsg.Notify{Notification: &uspmsg.Notify_ValueChange_{ValueChange: &uspmsg.Notify_ValueChange{
				ParamPath: p, ParamValue: after.values[p],
			}}})
		}
	}
	var created, deleted []string
	for o := range after.objects {
		if !before.objects[o] && isInstance(lastSeg(o)) {
			created = append(created, o)
		}
	}
	for o := range before.objects {
		if !after.objects[o] && isInstance(lastSeg(o)) {
			deleted = append(deleted, o)
		}
	}
	sortPaths(created)
	sortPaths(deleted)
	for _, o := range created {
		for _, s := range a.matching("ObjectCreation", o) {
			a.sendNotify(s.id, s.retry, &uspmsg.Notify{Notification: &uspmsg.Notify_ObjCreation{ObjCreation: &uspmsg.Notify_ObjectCreation{
				ObjPath: o, UniqueKeys: a.uniqueKeys(after, o),
			}}})
		}
	}
	for _, o := range deleted {
		for _, s := range a.matching("ObjectDeletion", o) {
			a.sendNotify(s.id, s.retry, &uspmsg.Notify{Notification: &uspmsg.Notify_ObjDeletion{ObjDeletion: &uspmsg.Notify_ObjectDeletion{ObjPath: o}}})
		}
	}
}

func lastSeg(p string) string {
	s := splitPath(p)
	return s[len(s)-1]
}

// sendNotify queues a Notify for the Controller. With sendResp it is
// retried on the TR-369 Notify retry schedule, with the same msg_id, until a NotifyResp
// (or an Error) for it arrives.
func (a *Agent) sendNotify(subID string, sendResp bool, n *uspmsg.Notify) {
	n.SubscriptionId, n.SendResp = subID, sendResp
	msgID := a.nextMsgID("NOTIFY")
	rec, err := usp.MarshalMsgRecord(a.id, a.controllerID(), usp.NewRequest(msgID, &uspmsg.Request{ReqType: &uspmsg.Request_Notify{Notify: n}}))
	if err != nil {
		return
	}
	a.emit(Outgoing{Record: rec})
	if !sendResp {
		return
	}
	p := &pendingNotify{record: rec}
	a.pending[msgID] = p
	a.scheduleRetry(msgID, p)
}

func (a *Agent) scheduleRetry(msgID string, p *pendingNotify) {
	p.timer = a.after(a.retryWait(p.attempt+1), func() {
		if a.pending[msgID] != p {
			return
		}
		p.attempt++
		a.emit(Outgoing{Record: p.record})
		a.scheduleRetry(msgID, p)
	})
}

// acknowledge ends the retries of the Notify msgID.
func (a *Agent) acknowledge(msgID string) {
	p, ok := a.pending[msgID]
	if !ok {
		return
	}
	if p.timer.Stop() {
		delete(a.timers, p.timer)
	}
	delete(a.pending, msgID)
}

func (a *Agent) operationComplete(command, key string, out map[string]string, fail *uspmsg.Notify_OperationComplete_CommandFailure) {
	obj, name := devicemodel.SplitParameter(command)
	oc := &uspmsg.Notify_OperationComplete{ObjPath: obj, CommandName: name, CommandKey: key}
	if fail != nil {
		oc.OperationResp = &uspmsg.Notify_OperationComplete_CmdFailure{CmdFailure: fail}
	} else {
		oc.OperationResp = &uspmsg.Notify_OperationComplete_ReqOutputArgs{ReqOutputArgs: &uspmsg.Notify_OperationComplete_OutputArgs{OutputArgs: out}}
	}
	for _, s := range a.matching("OperationComplete", command) {
		a.sendNotify(s.id, s.retry, &uspmsg.Notify{Notification: &uspmsg.Notify_OperComplete{OperComplete: oc}})
	}
}

// sendOnBoardRequest sends an OnBoardRequest: subscription_id "" and
// send_resp always true (TR-369 "Notifications", first contact).
func (a *Agent) sendOnBoardRequest() {
	a.sendNotify("", true, &uspmsg.Notify{Notification: &uspmsg.Notify_OnBoardReq{OnBoardReq: &uspmsg.Notify_OnBoardRequest{
		Oui: a.cfg.OUI, ProductClass: a.cfg.ProductClass, SerialNumber: a.cfg.SerialNumber,
		AgentSupportedProtocolVersions: usp.AgentSupportedVersions,
	}}})
}

// reboot restarts the agent: pending retries and async commands are lost,
// non-persistent subscriptions disappear (TR-181 Device.LocalAgent.Subscription.{i}.), a factory reset
// returns the whole model to its defaults; then the MTP is told to
// reconnect and Boot! follows (TR-181 Device.LocalAgent events).
func (a *Agent) reboot(cause, commandKey string, factory bool) {
	a.bootCommandKey, a.bootCause = commandKey, cause
	for id, p := range a.pending {
		if p.timer.Stop() {
			delete(a.timers, p.timer)
		}
		delete(a.pending, id)
	}
	if factory {
		// A factory reset keeps the firmware the device runs.
		m := a.factory.clone()
		for k, v := range a.m.values {
			if strings.HasPrefix(k, "Device.DeviceInfo.FirmwareImage.") || k == "Device.DeviceInfo.ActiveFirmwareImage" ||
				k == "Device.DeviceInfo.BootFirmwareImage" || k == "Device.DeviceInfo.SoftwareVersion" {
				m.values[k] = v
			}
		}
		a.m = m
	} else {
		m := a.m.clone()
		for _, row := range m.instances("Device.LocalAgent.Subscription.") {
			if m.values[row+"Persistent"] != "true" {
				m.deleteObject(row)
			}
		}
		for _, row := range m.instances("Device.LocalAgent.Request.") {
			m.deleteObject(row)
		}
		a.m = m
	}
	a.boots++
	a.bootTime = a.cfg.Now()
	a.emit(Outgoing{Restart: true, Downtime: a.cfg.RebootDowntime, Gone: a.cfg.RebootNeverReturns})
	a.sendBoot()
}

// sendBoot sends Device.Boot! to every matching Event subscription, with
// the persisted CommandKey and Cause and the ParameterMap of the enabled
// BootParameters (TR-181 Device.LocalAgent events).
func (a *Agent) sendBoot() {
	params := map[string]string{}
	for _, c := range a.m.instances("Device.LocalAgent.Controller.") {
		for _, bp := range a.m.instances(c + "BootParameter.") {
			if a.m.values[bp+"Enable"] != "true" {
				continue
			}
			name := a.m.values[bp+"ParameterName"]
			obj, pn := devicemodel.SplitParameter(name)
			if a.m.objects[obj] {
				params[name] = a.read(obj, pn)
			}
		}
	}
	pm, _ := json.Marshal(params) // map keys come out sorted
	args := map[string]string{
		"CommandKey":      a.bootCommandKey,
		"Cause":           a.bootCause,
		"FirmwareUpdated": strconv.FormatBool(a.bootFirmwareUpdated),
		"ParameterMap":    string(pm),
	}
	for _, s := range a.matching("Event", "Device.Boot!") {
		a.sendNotify(s.id, s.retry, &uspmsg.Notify{Notification: &uspmsg.Notify_Event_{Event: &uspmsg.Notify_Event{
			ObjPath: "Device.", EventName: "Boot!", Params: args,
		}}})
	}
	a.bootCommandKey, a.bootCause, a.bootFirmwareUpdated = "", "LocalReboot", false
}

// Reboot reboots the agent locally (Cause LocalReboot, no CommandKey).
func (a *Agent) Reboot() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.reboot("LocalReboot", "", false)
	}
}

// FactoryReset resets the agent locally (Cause LocalFactoryReset).
func (a *Agent) FactoryReset() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.reboot("LocalFactoryReset", "", true)
	}
}

// SendOnBoardRequest sends an OnBoardRequest Notify, retried until the
// Controller answers (TR-369 "Notifications", first contact).
func (a *Agent) SendOnBoardRequest() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.closed {
		a.sendOnBoardRequest()
	}
}

// SetParameter changes an existing parameter locally, as the device itself
// or its user would, bypassing writability; subscribed ValueChange
// notifications fire as for a Controller's Set.
func (a *Agent) SetParameter(path, value string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.m.values[path]; !ok {
		return fmt.Errorf("agent: no parameter %s", path)
	}
	before, work := a.m, a.m.clone()
	work.values[path] = value
	a.commit(before, work)
	return nil
}

// Parameter returns the current value of a parameter.
func (a *Agent) Parameter(path string) (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	obj, name := devicemodel.SplitParameter(path)
	if d := defOf(obj); d == nil || d.param(name) == nil || !a.m.objects[obj] {
		return "", false
	}
	return a.read(obj, name), true
}

// CreateInstance adds a row to table (a table path, "Device.NAT.PortMapping.")
// as the device itself or its user would, behind every Controller's back:
// no ObjectCreation notification is sent, whatever the subscriptions.
// params are set on the new row (by name relative to it, writability not
// checked); agent-assigned keys are filled as for an Add. It returns the
// new instance's path.
func (a *Agent) CreateInstance(table string, params map[string]string) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !isTablePath(table) {
		return "", fmt.Errorf("agent: %s is not a table of the data model", table)
	}
	d := schema.byPath[supportedOf(table)+"{i}."]
	segs := splitPath(table)
	parent := strings.Join(segs[:len(segs)-1], ".") + "."
	if !a.m.objects[parent] && defOf(parent) != nil && defOf(parent).multi {
		return "", fmt.Errorf("agent: %s does not exist", parent)
	}
	for name := range params {
		if d.param(name) == nil {
			return "", fmt.Errorf("agent: %s has no parameter %s", table, name)
		}
	}
	work := a.m.clone()
	inst := work.addInstance(table)
	for name, v := range params {
		work.values[inst+name] = v
	}
	if d.param("Alias") != nil && work.values[inst+"Alias"] == "" {
		work.values[inst+"Alias"] = "cpe-" + strings.TrimSuffix(inst[len(table):], ".")
	}
	if keys, dup := duplicateKey(work, inst); dup {
		return "", fmt.Errorf("agent: %s would duplicate the unique key %s", inst, keys)
	}
	a.m = work // not commit: nobody is told
	return inst, nil
}
