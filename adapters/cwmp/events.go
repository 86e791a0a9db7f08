package cwmp

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// identityFromInform gathers the identity facts an Inform carries: the
// DeviceIdStruct and the forced-inform DeviceInfo/ManagementServer
// parameters under either root (TR-069 A.3.3, TR-069 A.3.3.1).
func identityFromInform(deviceID string, inf *cwmp.Inform, remote string) (*duetv1.DeviceIdentity, *duetv1.Reachability, string) {
	id := &duetv1.DeviceIdentity{
		Id:           deviceID,
		Protocol:     duetv1.Protocol_PROTOCOL_CWMP,
		Manufacturer: inf.DeviceId.Manufacturer,
		Oui:          inf.DeviceId.OUI,
		ProductClass: inf.DeviceId.ProductClass,
		SerialNumber: inf.DeviceId.SerialNumber,
	}
	reach := &duetv1.Reachability{Transport: "cwmp", Address: remote}
	root := ""
	for _, p := range inf.ParameterList {
		name := strings.TrimSpace(p.Name)
		if root == "" {
			root = devicemodel.DataModelRoot(name)
		}
		switch {
		case strings.HasSuffix(name, ".DeviceInfo.SoftwareVersion"):
			id.SoftwareVersion = p.Value.Data
		case strings.HasSuffix(name, ".DeviceInfo.HardwareVersion"):
			id.HardwareVersion = p.Value.Data
		case strings.HasSuffix(name, ".DeviceInfo.ProvisioningCode"):
			id.ProvisioningCode = p.Value.Data
		case strings.HasSuffix(name, ".DeviceInfo.ModelName"):
			id.ModelName = p.Value.Data
		case strings.HasSuffix(name, ".ManagementServer.ConnectionRequestURL"):
			reach.ConnectionRequestUrl = strings.TrimSpace(p.Value.Data)
		}
	}
	id.DataModel = root
	return id, reach, root
}

// forcedInform reports whether name is a forced-inform parameter, i.e. one
// present in every Inform whatever changed (TR-069 A.3.3.1). What remains of
// a "4 VALUE CHANGE" Inform's ParameterList is the changed values.
func forcedInform(name string) bool {
	switch name {
	case "Device.RootDataModelVersion", "Device.DeviceSummary", "InternetGatewayDevice.DeviceSummary",
		"InternetGatewayDevice.DeviceInfo.SpecVersion":
		return true
	}
	for _, suffix := range []string{
		".DeviceInfo.HardwareVersion", ".DeviceInfo.SoftwareVersion", ".DeviceInfo.ProvisioningCode",
		".ManagementServer.ParameterKey", ".ManagementServer.ConnectionRequestURL",
		".ManagementServer.AliasBasedAddressing",
	} {
		if strings.HasSuffix(name, suffix) && strings.Count(name, ".") == 2 {
			return true
		}
	}
	// TR-098 default WAN connection address.
	return strings.HasPrefix(name, "InternetGatewayDevice.WANDevice.") &&
		(strings.Contains(name, ".WANIPConnection.") || strings.Contains(name, ".WANPPPConnection.")) &&
		strings.HasSuffix(name, ".ExternalIPAddress")
}

func paramType(t cwmp.ValueType) duetv1.ParamType {
	switch t {
	case cwmp.TypeInt:
		return duetv1.ParamType_PARAM_TYPE_INT
	case cwmp.TypeUnsignedInt:
		return duetv1.ParamType_PARAM_TYPE_UNSIGNED_INT
	case cwmp.TypeLong:
		return duetv1.ParamType_PARAM_TYPE_LONG
	case cwmp.TypeUnsignedLong:
		return duetv1.ParamType_PARAM_TYPE_UNSIGNED_LONG
	case cwmp.TypeBoolean:
		return duetv1.ParamType_PARAM_TYPE_BOOLEAN
	case cwmp.TypeDateTime:
		return duetv1.ParamType_PARAM_TYPE_DATE_TIME
	case cwmp.TypeBase64:
		return duetv1.ParamType_PARAM_TYPE_BASE64
	case cwmp.TypeHexBinary:
		return duetv1.ParamType_PARAM_TYPE_HEX_BINARY
	}
	return duetv1.ParamType_PARAM_TYPE_STRING
}

func valueType(t duetv1.ParamType) cwmp.ValueType {
	switch t {
	case duetv1.ParamType_PARAM_TYPE_INT:
		return cwmp.TypeInt
	case duetv1.ParamType_PARAM_TYPE_UNSIGNED_INT:
		return cwmp.TypeUnsignedInt
	case duetv1.ParamType_PARAM_TYPE_LONG:
		return cwmp.TypeLong
	case duetv1.ParamType_PARAM_TYPE_UNSIGNED_LONG:
		return cwmp.TypeUnsignedLong
	case duetv1.ParamType_PARAM_TYPE_BOOLEAN:
		return cwmp.TypeBoolean
	case duetv1.ParamType_PARAM_TYPE_DATE_TIME:
		return cwmp.TypeDateTime
	case duetv1.ParamType_PARAM_TYPE_BASE64:
		return cwmp.TypeBase64
	case duetv1.ParamType_PARAM_TYPE_HEX_BINARY:
		return cwmp.TypeHexBinary
	}
	return cwmp.TypeString
}

func toParams(pl []cwmp.ParameterValueStruct, keep func(string) bool) []*duetv1.Parameter {
	out := make([]*duetv1.Parameter, 0, len(pl))
	for _, p := range pl {
		name := strings.TrimSpace(p.Name)
		if keep != nil && !keep(name) {
			continue
		}
		out = append(out, &duetv1.Parameter{Path: name, Value: p.Value.Data, Type: paramType(p.Value.Type)})
	}
	return out
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() || t.Equal(cwmp.UnknownTime) {
		return nil
	}
	return timestamppb.New(t)
}

// publish stores one event for the session's device.
// publish stores the session's events, in order, waiting for the stream
// once for all of them.
func (a *ACS) publish(ctx context.Context, s *session, evs ...*duetv1.Event) error {
	if s.reach != nil {
		s.reach.AdapterId = a.o.AdapterID
	}
	for _, ev := range evs {
		ev.Device, ev.Reachability, ev.Source = s.ident, s.reach, a.o.AdapterID
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.o.SessionTimeout)
	defer cancel()
	if err := a.o.Bus.PublishEvents(ctx, evs...); err != nil {
		a.log.Warn("publishing events failed", "device", s.deviceID, "session", s.id, "kind", bus.EventKind(evs[0]), "events", len(evs), "err", err)
		return err
	}
	return nil
}

// publishInform stores the inform event and one event per meaningful
// event code (TR-069 A.3.3.1, event codes). "7 TRANSFER COMPLETE" is published when its
// TransferComplete RPC arrives and "8 DIAGNOSTICS COMPLETE" once the
// results have been read in this session.
func (a *ACS) publishInform(ctx context.Context, s *session, env *cwmp.Envelope, inf *cwmp.Inform) error {
	evs := make([]*duetv1.InformEvent, 0, len(inf.Event))
	var rebootKey string
	for _, e := range inf.Event {
		code := strings.TrimSpace(e.EventCode)
		evs = append(evs, &duetv1.InformEvent{Code: code, CommandKey: e.CommandKey})
		if strings.EqualFold(code, cwmp.EventMReboot) {
			rebootKey = e.CommandKey
		}
	}
	out := []*duetv1.Event{{Kind: &duetv1.Event_Inform{Inform: &duetv1.Inform{
		Events: evs, Params: toParams(inf.ParameterList, nil), RemoteAddress: s.reach.Address,
		RetryCount: inf.RetryCount, CurrentTime: timestamp(inf.CurrentTime), CwmpNamespace: env.Namespace,
	}}}}
	seen := map[string]bool{}
	for _, e := range evs {
		code := strings.ToUpper(e.Code)
		if seen[code] {
			continue
		}
		seen[code] = true
		var ev *duetv1.Event
		switch code {
		case cwmp.EventBootstrap:
			ev = &duetv1.Event{Kind: &duetv1.Event_Bootstrap{Bootstrap: &duetv1.Bootstrap{}}}
		case cwmp.EventBoot:
			ev = &duetv1.Event{Kind: &duetv1.Event_Boot{Boot: &duetv1.Boot{CommandKey: rebootKey}}}
		case cwmp.EventPeriodic:
			ev = &duetv1.Event{Kind: &duetv1.Event_Periodic{Periodic: &duetv1.Periodic{}}}
		case cwmp.EventValueChange:
			ev = &duetv1.Event{Kind: &duetv1.Event_ValueChange{ValueChange: &duetv1.ValueChange{
				Params: toParams(inf.ParameterList, func(n string) bool { return !forcedInform(n) }),
			}}}
		default:
			continue
		}
		out = append(out, ev)
	}
	// Every event of one Inform carries the Inform's time: a bootstrap is
	// then not "after" the values its own Inform reported, and the
	// controller, forgetting what it knew before the bootstrap, keeps
	// them (issue 12 item 1).
	at := timestamppb.Now()
	for _, ev := range out {
		ev.Time = at
	}
	// One wait for the stream: the CPE's InformResponse is not held up by
	// a round trip per event code.
	return a.publish(ctx, s, out...)
}

// cpeMethods is what we answer a CPE's GetRPCMethods with.
var cpeMethods = []string{
	"Inform", "GetRPCMethods", "TransferComplete", "AutonomousTransferComplete", "RequestDownload",
	"Kicked", "DUStateChangeComplete", "AutonomousDUStateChangeComplete",
}

// cpeRequest answers a CPE→ACS request (TR-069 A.3.3). Transfer and DU
// completions are stored on the bus first; if that fails the CPE gets a
// fault and, per TR-069, keeps the completion and sends it again later.
func (a *ACS) cpeRequest(ctx context.Context, s *session, m cwmp.Message) cwmp.Message {
	var ev *duetv1.Event
	var resp cwmp.Message
	switch m := m.(type) {
	case *cwmp.GetRPCMethods:
		return &cwmp.GetRPCMethodsResponse{MethodList: cpeMethods}
	case *cwmp.TransferComplete:
		ev = &duetv1.Event{Kind: &duetv1.Event_TransferComplete{TransferComplete: &duetv1.TransferComplete{
			CommandKey: m.CommandKey, Error: faultStructErr(m.FaultStruct),
			StartTime: timestamp(m.StartTime), CompleteTime: timestamp(m.CompleteTime),
		}}}
		resp = &cwmp.TransferCompleteResponse{}
	case *cwmp.AutonomousTransferComplete:
		ev = &duetv1.Event{Kind: &duetv1.Event_TransferComplete{TransferComplete: &duetv1.TransferComplete{
			Error: faultStructErr(m.FaultStruct), StartTime: timestamp(m.StartTime), CompleteTime: timestamp(m.CompleteTime),
			Autonomous: true, IsDownload: m.IsDownload, FileType: m.FileType, Url: m.TransferURL,
		}}}
		resp = &cwmp.AutonomousTransferCompleteResponse{}
	case *cwmp.DUStateChangeComplete:
		ev = &duetv1.Event{Kind: &duetv1.Event_OperationComplete{OperationComplete: duOutcome("ChangeDUState", m.CommandKey, m.Results)}}
		resp = &cwmp.DUStateChangeCompleteResponse{}
	case *cwmp.AutonomousDUStateChangeComplete:
		ev = &duetv1.Event{Kind: &duetv1.Event_OperationComplete{OperationComplete: duOutcome("AutonomousDUStateChange", "", m.Results)}}
		resp = &cwmp.AutonomousDUStateChangeCompleteResponse{}
	case *cwmp.RequestDownload:
		// Nothing in the bus schema for it yet; the controller sees the
		// "9 REQUEST DOWNLOAD" code in the inform event.
		a.log.Info("CPE requested a download", "device", s.deviceID, "file_type", m.FileType)
		return &cwmp.RequestDownloadResponse{}
	case *cwmp.Kicked:
		return &cwmp.KickedResponse{NextURL: m.Next}
	default:
		// An ACS→CPE method sent by the CPE, or one we do not serve.
		return cwmp.NewFault(cwmp.FaultACSMethodNotSupported, "")
	}
	if err := a.publish(ctx, s, ev); err != nil {
		return cwmp.NewFault(cwmp.FaultACSInternalError, "")
	}
	return resp
}

// faultStructErr maps a transfer FaultStruct with the codec's FaultToCode;
// FaultCode 0 is success.
func faultStructErr(f cwmp.FaultStruct) *duetv1.Error {
	if f.FaultCode == 0 {
		return nil
	}
	msg := f.FaultString
	if msg == "" {
		msg = cwmp.FaultMessage(f.FaultCode)
	}
	return &duetv1.Error{Code: duetv1.ErrorCode(cwmp.FaultToCode(f.FaultCode)), Message: msg, DeviceFault: f.FaultCode}
}

func duOutcome[T any](command, key string, results []T) *duetv1.OperationComplete {
	oc := &duetv1.OperationComplete{Command: command, CommandKey: key, OutputArgs: map[string]string{}}
	for i := range results {
		flattenInto(oc.OutputArgs, "Results."+strconv.Itoa(i+1)+".", &results[i])
	}
	for i := 1; ; i++ {
		code, ok := oc.OutputArgs["Results."+strconv.Itoa(i)+".Fault.FaultCode"]
		if !ok {
			break
		}
		if code != "0" && oc.Error == nil {
			n, _ := strconv.ParseUint(code, 10, 32)
			oc.Error = faultStructErr(cwmp.FaultStruct{FaultCode: uint32(n), FaultString: oc.OutputArgs["Results."+strconv.Itoa(i)+".Fault.FaultString"]})
		}
	}
	return oc
}
