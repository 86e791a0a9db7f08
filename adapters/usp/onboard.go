package usp

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// subscriptionSpec is one row of Duet's baseline in
// Device.LocalAgent.Subscription.{i}. (TR-181 Device.LocalAgent.Subscription.{i}.).
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

// onboardMode says how much an onboarding run does.
type onboardMode int

const (
	// onboardCheck reads Duet's subscriptions only and onboards fully
	// when one is missing (a factory reset, non-persistent rows lost).
	onboardCheck onboardMode = iota
	// onboardFull also reads DeviceInfo and reports the identity facts:
	// first contact in this process, or a firmware update.
	onboardFull
)

// onboardCoalesce: a check asked for within this time after an onboarding
// of the same session started is the same happening seen twice (the
// Connect record after a reboot, then its Boot! on the agent's factory
// subscription) and is not run again.
const onboardCoalesce = time.Minute

type onboardRun struct {
	mode onboardMode
	// again: a full onboarding was asked for while this one ran.
	again bool
}

// startOnboarding queues eid for onboarding and reports whether a run is
// queued or running for it. A check coalesces with a run queued, running
// or started in the same session within onboardCoalesce; a full request
// upgrades a queued one, or runs once more after a running one. Policy
// when the queue is full: drop and count; the next Boot! or first contact
// retries.
func (e *Endpoint) startOnboarding(eid string, mode onboardMode) bool {
	e.mu.Lock()
	if r, busy := e.onboarding[eid]; busy {
		if mode == onboardFull && r.mode != onboardFull {
			r.again = true
		}
		e.mu.Unlock()
		return true
	}
	if s := e.agents[eid]; mode == onboardCheck && s != nil && !s.onboardedAt.IsZero() && time.Since(s.onboardedAt) < onboardCoalesce {
		e.mu.Unlock()
		metricOnboardings.WithLabelValues("coalesced").Inc()
		return true
	}
	e.onboarding[eid] = &onboardRun{mode: mode}
	e.mu.Unlock()
	select {
	case e.onboardQ <- eid:
		return true
	default:
		metricQueueDropped.WithLabelValues("onboard").Inc()
		e.mu.Lock()
		delete(e.onboarding, eid)
		e.mu.Unlock()
		return false
	}
}

// checkAfresh starts a subscription check for eid that no onboarding run
// before now coalesces: a new happening (a Connect record, a factory reset)
// is not covered by an earlier one.
func (e *Endpoint) checkAfresh(eid string) {
	e.mu.Lock()
	if s := e.agents[eid]; s != nil {
		s.onboardedAt = time.Time{}
	}
	e.mu.Unlock()
	e.startOnboarding(eid, onboardCheck)
}

func (e *Endpoint) runOnboard() {
	defer e.wg.Done()
	for {
		select {
		case <-e.ctx.Done():
			return
		case eid := <-e.onboardQ:
			for {
				e.mu.Lock()
				r := e.onboarding[eid]
				mode := onboardFull
				if r != nil {
					mode = r.mode
					r.again = false
				}
				if s := e.agents[eid]; s != nil {
					s.onboardedAt = time.Now()
				}
				e.mu.Unlock()
				ctx, cancel := context.WithTimeout(e.ctx, 3*e.opts.RequestTimeout)
				err := e.onboard(ctx, eid, mode)
				cancel()
				e.mu.Lock()
				if err != nil {
					metricOnboardings.WithLabelValues("failed").Inc()
					e.known.remove(eid)
				} else {
					metricOnboardings.WithLabelValues("ok").Inc()
					e.known.put(eid, struct{}{})
				}
				again := r != nil && r.again && e.ctx.Err() == nil
				if again {
					r.mode = onboardFull
				} else {
					delete(e.onboarding, eid)
				}
				s := e.agents[eid]
				e.mu.Unlock()
				if err != nil {
					e.log.Warn("usp onboarding failed", "device", eid, "err", err)
					if s != nil {
						// It talked to us: it is online even if it
						// could not be onboarded.
						e.announce(s, nil)
					}
				}
				if !again {
					break
				}
			}
		}
	}
}

// onboard reads the agent's identity and makes sure Duet's subscriptions
// exist (TR-369 "Notifications", first contact step 5, TR-181 Device.LocalAgent.Subscription.{i}.). It is idempotent: it only adds the
// subscriptions whose ID is missing.
func (e *Endpoint) onboard(ctx context.Context, eid string, mode onboardMode) error {
	s := e.session(eid)
	if s == nil {
		return fmt.Errorf("agent not connected")
	}
	var subs *duetv1.GetResult
	if mode == onboardCheck {
		var err error
		subs, err = e.get(ctx, eid, []string{"Device.LocalAgent.Subscription."}, 0)
		if err != nil {
			return fmt.Errorf("get subscriptions: %w", err)
		}
		if missing := e.missingSubscriptions(subs); len(missing) == 0 {
			return nil // onboarded before, and nothing was lost
		}
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
	// The time of this read stamps the bootstrap this onboarding may end
	// with: what was read during the bootstrap is not older than it, and
	// is kept when the controller forgets what it knew before (issue 12
	// item 1).
	seen := timestamppb.Now()
	announced := e.announce(s, id)
	e.mu.Lock()
	mtp, addr := s.mtp, s.addr
	e.mu.Unlock()

	if subs == nil {
		if subs, err = e.get(ctx, eid, []string{"Device.LocalAgent.Subscription."}, 0); err != nil {
			return fmt.Errorf("get subscriptions: %w", err)
		}
	}
	have := subscriptionIDs(subs)
	var create []*uspmsg.Add_CreateObject
	for _, sp := range e.missingSubscriptions(subs) {
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
		// CWMP's "0 BOOTSTRAP" (TR-069): what Duet knew of its settings
		// no longer holds, and policies provision it again.
		e.publish(eid, mtp, addr, &duetv1.Event{Time: seen, Kind: &duetv1.Event_Bootstrap{Bootstrap: &duetv1.Bootstrap{}}}, nil)
		if !announced {
			// announce said nothing (this session announced the same
			// facts before), yet the bootstrap makes the controller
			// forget the DeviceInfo it cached before: tell it again what
			// was just read, at the time it was read, so the cache keeps it.
			e.publish(eid, mtp, addr, &duetv1.Event{Device: proto.Clone(id).(*duetv1.DeviceIdentity), Time: seen,
				Kind: &duetv1.Event_Online{Online: &duetv1.Online{}}}, nil)
		}
	}
	return e.completeOnboarding(ctx, eid)
}

// subscriptionIDs lists the IDs of the Subscription rows a Get returned.
func subscriptionIDs(subs *duetv1.GetResult) map[string]bool {
	have := map[string]bool{}
	for _, p := range subs.GetParams() {
		if strings.HasSuffix(p.GetPath(), ".ID") {
			have[p.GetValue()] = true
		}
	}
	return have
}

// missingSubscriptions returns the baseline rows the agent lacks.
func (e *Endpoint) missingSubscriptions(subs *duetv1.GetResult) []subscriptionSpec {
	have := subscriptionIDs(subs)
	var out []subscriptionSpec
	for _, sp := range e.baselineSubscriptions() {
		if !have[sp.id] {
			out = append(out, sp)
		}
	}
	return out
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
// its OnBoardRequest every OnBoardingRestartTime (TR-369 "Notifications", first contact step 3). An
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
