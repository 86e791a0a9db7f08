package usp

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// subscriptionSpec is one row of Duet's baseline in
// Device.LocalAgent.Subscription.{i}. (usp.md §9.3).
type subscriptionSpec struct {
	id, notifType, ref string
	retry              bool
}

// Subscription IDs Duet creates; the prefix marks them as ours.
const (
	SubBoot     = "duet-boot"
	SubPeriodic = "duet-periodic"
	SubTransfer = "duet-transfer"
	SubOpc      = "duet-opc"
	SubVCPrefix = "duet-vc-"
)

func (e *Endpoint) baselineSubscriptions() []subscriptionSpec {
	subs := []subscriptionSpec{
		// NotifRetry on Boot!: reboot completion must not be lost.
		{id: SubBoot, notifType: "Event", ref: "Device.Boot!", retry: true},
		{id: SubPeriodic, notifType: "Event", ref: "Device.LocalAgent.Periodic!"},
		{id: SubTransfer, notifType: "Event", ref: "Device.LocalAgent.TransferComplete!", retry: true},
		{id: SubOpc, notifType: "OperationComplete", ref: "Device.", retry: true},
	}
	for i, p := range e.opts.OnboardValueChange {
		subs = append(subs, subscriptionSpec{id: fmt.Sprintf("%s%d", SubVCPrefix, i+1), notifType: "ValueChange", ref: p})
	}
	return subs
}

// startOnboarding queues eid for onboarding. A request for an agent already
// queued or running makes it run once more afterwards (a Boot! during
// onboarding may have wiped what was just checked). Policy when the queue is
// full: drop and count; the next Boot! or first contact retries.
func (e *Endpoint) startOnboarding(eid string) {
	e.mu.Lock()
	if _, busy := e.onboarding[eid]; busy {
		e.onboarding[eid] = true
		e.mu.Unlock()
		return
	}
	e.onboarding[eid] = false
	e.mu.Unlock()
	select {
	case e.onboardQ <- eid:
	default:
		metricQueueDropped.WithLabelValues("onboard").Inc()
		e.mu.Lock()
		delete(e.onboarding, eid)
		e.mu.Unlock()
	}
}

func (e *Endpoint) runOnboard() {
	defer e.wg.Done()
	for {
		select {
		case <-e.ctx.Done():
			return
		case eid := <-e.onboardQ:
			for {
				ctx, cancel := context.WithTimeout(e.ctx, 3*e.opts.RequestTimeout)
				err := e.onboard(ctx, eid)
				cancel()
				e.mu.Lock()
				if err != nil {
					metricOnboardings.WithLabelValues("failed").Inc()
					e.known.remove(eid)
				} else {
					metricOnboardings.WithLabelValues("ok").Inc()
					e.known.put(eid, struct{}{})
				}
				again := e.onboarding[eid] && e.ctx.Err() == nil
				if again {
					e.onboarding[eid] = false
				} else {
					delete(e.onboarding, eid)
				}
				e.mu.Unlock()
				if err != nil {
					e.log.Warn("usp onboarding failed", "device", eid, "err", err)
				}
				if !again {
					break
				}
			}
		}
	}
}

// onboard reads the agent's identity and makes sure Duet's subscriptions
// exist (usp.md §9.2 step 5, §9.3). It is idempotent: it only adds the
// subscriptions whose ID is missing.
func (e *Endpoint) onboard(ctx context.Context, eid string) error {
	s := e.session(eid)
	if s == nil {
		return fmt.Errorf("agent not connected")
	}
	info, err := e.get(ctx, eid, []string{"Device.DeviceInfo."}, 1)
	if err != nil {
		return fmt.Errorf("get Device.DeviceInfo.: %w", err)
	}
	id := &duetv1.DeviceIdentity{DataModel: "Device."}
	for _, p := range info.GetParams() {
		switch strings.TrimPrefix(p.GetPath(), "Device.DeviceInfo.") {
		case "Manufacturer":
			id.Manufacturer = p.GetValue()
		case "ManufacturerOUI":
			id.Oui = p.GetValue()
		case "ModelName":
			id.ModelName = p.GetValue()
		case "ProductClass":
			id.ProductClass = p.GetValue()
		case "SerialNumber":
			id.SerialNumber = p.GetValue()
		case "SoftwareVersion":
			id.SoftwareVersion = p.GetValue()
		case "HardwareVersion":
			id.HardwareVersion = p.GetValue()
		case "ProvisioningCode":
			id.ProvisioningCode = p.GetValue()
		}
	}
	e.mu.Lock()
	mtp, addr := s.mtp, s.addr
	e.mu.Unlock()
	// The time of this read stamps the online event that carries it and
	// the bootstrap this onboarding may end with: what was read during
	// the bootstrap is not older than it, and is kept when the controller
	// forgets what it knew before (issue 12 item 1).
	seen := timestamppb.Now()
	e.publish(eid, mtp, addr, &duetv1.Event{Device: id, Time: seen, Kind: &duetv1.Event_Online{Online: &duetv1.Online{}}}, nil)

	subs, err := e.get(ctx, eid, []string{"Device.LocalAgent.Subscription."}, 0)
	if err != nil {
		return fmt.Errorf("get subscriptions: %w", err)
	}
	have := map[string]bool{}
	for _, p := range subs.GetParams() {
		if strings.HasSuffix(p.GetPath(), ".ID") {
			have[p.GetValue()] = true
		}
	}
	var create []*uspmsg.Add_CreateObject
	for _, sp := range e.baselineSubscriptions() {
		if have[sp.id] {
			continue
		}
		settings := []*uspmsg.Add_CreateParamSetting{
			{Param: "ID", Value: sp.id, Required: true},
			{Param: "NotifType", Value: sp.notifType, Required: true},
			{Param: "ReferenceList", Value: sp.ref, Required: true},
			{Param: "Enable", Value: "true", Required: true},
			{Param: "Persistent", Value: "true"},
		}
		if sp.retry {
			settings = append(settings, &uspmsg.Add_CreateParamSetting{Param: "NotifRetry", Value: "true"})
		}
		create = append(create, &uspmsg.Add_CreateObject{ObjPath: "Device.LocalAgent.Subscription.", ParamSettings: settings})
	}
	if len(create) > 0 {
		if err := e.addSubscriptions(ctx, eid, create); err != nil {
			return err
		}
	}
	if !have[SubBoot] {
		// The agent holds no configuration of Duet's: first contact, or
		// a factory reset wiped it. Either way it is a bootstrap, as
		// CWMP's "0 BOOTSTRAP" (cwmp.md): what Duet knew of its settings
		// no longer holds, and policies provision it again.
		e.publish(eid, mtp, addr, &duetv1.Event{Time: seen, Kind: &duetv1.Event_Bootstrap{Bootstrap: &duetv1.Bootstrap{}}}, nil)
	}
	return e.completeOnboarding(ctx, eid)
}

// addSubscriptions creates the missing baseline subscriptions in one Add
// with allow_partial, so one refused row does not block the others.
func (e *Endpoint) addSubscriptions(ctx context.Context, eid string, create []*uspmsg.Add_CreateObject) error {
	start := time.Now()
	m, err := e.request(ctx, eid, uspmsg.Header_ADD, &uspmsg.Request{ReqType: &uspmsg.Request_Add{Add: &uspmsg.Add{AllowPartial: true, CreateObjs: create}}})
	if err != nil {
		return fmt.Errorf("add subscriptions: %w", err)
	}
	if err := respError(m); err != nil {
		return fmt.Errorf("add subscriptions: %w", err)
	}
	for _, r := range m.GetBody().GetResponse().GetAddResp().GetCreatedObjResults() {
		if f := r.GetOperStatus().GetOperFailure(); f != nil {
			e.log.Warn("agent refused a subscription", "device", eid, "err_code", f.GetErrCode(), "err", f.GetErrMsg())
		}
	}
	e.log.Debug("usp subscriptions created", "device", eid, "count", len(create), "took", time.Since(start))
	return nil
}

// completeOnboarding sets OnBoardingComplete=true on the agent's Controller
// row for Duet, unless it already is: while it is false the agent repeats
// its OnBoardRequest every OnBoardingRestartTime (usp.md §9.2 step 3). An
// agent without the parameter (older data models) is left alone.
func (e *Endpoint) completeOnboarding(ctx context.Context, eid string) error {
	res, err := e.get(ctx, eid, []string{"Device.LocalAgent.Controller.*.EndpointID", "Device.LocalAgent.Controller.*.OnBoardingComplete"}, 0)
	if err != nil {
		return fmt.Errorf("get controller rows: %w", err)
	}
	ours := map[string]bool{} // Controller instance path -> is Duet's row
	done := map[string]bool{}
	for _, p := range res.GetParams() {
		obj, name := devicemodel.SplitParameter(p.GetPath())
		switch name {
		case "EndpointID":
			ours[obj] = p.GetValue() == e.id
		case "OnBoardingComplete":
			done[obj] = isTrue(p.GetValue())
		}
	}
	for obj, mine := range ours {
		isDone, has := done[obj]
		if !mine || !has || isDone {
			continue
		}
		r, err := e.set(ctx, eid, &duetv1.SetRequest{Params: []*duetv1.Parameter{{Path: obj + "OnBoardingComplete", Value: "true"}}})
		if err != nil {
			return fmt.Errorf("set %sOnBoardingComplete: %w", obj, err)
		}
		if r.GetError() != nil {
			e.log.Warn("agent refused OnBoardingComplete", "device", eid, "err", r.GetError().GetMessage())
		}
	}
	return nil
}
