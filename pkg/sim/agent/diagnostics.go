package agent

import (
	"strconv"
	"strings"

	"github.com/duet-dm/duet/pkg/sim/simdiag"
	"github.com/duet-dm/duet/pkg/usp"
	"github.com/duet-dm/duet/proto/usp/uspmsg"
)

// Diagnostics as TR-181 agents offer them: async commands whose
// OperationComplete carries the results as output arguments (TR-181
// Device.IP.Diagnostics.IPPing(), TraceRoute(), DownloadDiagnostics(),
// UploadDiagnostics(), UDPEchoDiagnostics(),
// Device.DNS.Diagnostics.NSLookupDiagnostics()). The figures come from
// pkg/sim/simdiag: the transfer tests really fetch and send.

// diagSchema is the data model of the diagnostics.
var diagSchema = []objDef{
	{path: "Device.IP.", params: []paramDef{}},
	{path: "Device.IP.Diagnostics.", commands: []cmdDef{
		{name: "IPPing()", async: true,
			inputs: []string{"Interface", "ProtocolVersion", "Host", "NumberOfRepetitions", "Timeout", "DataBlockSize", "DSCP"},
			output: []string{"Status", "IPAddressUsed", "SuccessCount", "FailureCount", "AverageResponseTime", "MinimumResponseTime", "MaximumResponseTime",
				"AverageResponseTimeDetailed", "MinimumResponseTimeDetailed", "MaximumResponseTimeDetailed"}},
		{name: "TraceRoute()", async: true,
			inputs: []string{"Interface", "ProtocolVersion", "Host", "NumberOfTries", "Timeout", "DataBlockSize", "DSCP", "MaxHopCount"},
			output: []string{"Status", "IPAddressUsed", "ResponseTime", "RouteHops.{i}.Host", "RouteHops.{i}.HostAddress", "RouteHops.{i}.ErrorCode", "RouteHops.{i}.RTTimes"}},
		{name: "DownloadDiagnostics()", async: true,
			inputs: []string{"Interface", "DownloadURL", "DSCP", "EthernetPriority", "ProtocolVersion"},
			output: []string{"Status", "ROMTime", "BOMTime", "EOMTime", "TestBytesReceived", "TotalBytesReceived", "TCPOpenRequestTime", "TCPOpenResponseTime"}},
		{name: "UploadDiagnostics()", async: true,
			inputs: []string{"Interface", "UploadURL", "DSCP", "EthernetPriority", "TestFileLength", "ProtocolVersion"},
			output: []string{"Status", "ROMTime", "BOMTime", "EOMTime", "TestBytesSent", "TotalBytesSent", "TCPOpenRequestTime", "TCPOpenResponseTime"}},
		{name: "UDPEchoDiagnostics()", async: true,
			inputs: []string{"Interface", "Host", "Port", "NumberOfRepetitions", "Timeout", "DataBlockSize", "DSCP", "InterTransmissionTime", "ProtocolVersion"},
			output: []string{"Status", "SuccessCount", "FailureCount", "AverageResponseTime", "MinimumResponseTime", "MaximumResponseTime"}},
	}},
	{path: "Device.DNS.", params: []paramDef{}},
	{path: "Device.DNS.Diagnostics.", commands: []cmdDef{
		{name: "NSLookupDiagnostics()", async: true,
			inputs: []string{"Interface", "HostName", "DNSServer", "Timeout", "NumberOfRepetitions"},
			output: []string{"Status", "SuccessCount", "Result.{i}.Status", "Result.{i}.AnswerType", "Result.{i}.HostNameReturned",
				"Result.{i}.IPAddresses", "Result.{i}.DNSServerIP", "Result.{i}.ResponseTime"}},
	}},
}

// diagMandatory are each diagnostic's mandatory input arguments (TR-181
// commands); one missing fails the Operate with 7027.
var diagMandatory = map[string][]string{
	"Device.IP.Diagnostics.IPPing()":               {"ProtocolVersion", "Host", "NumberOfRepetitions", "Timeout", "DataBlockSize"},
	"Device.IP.Diagnostics.TraceRoute()":           {"ProtocolVersion", "Host"},
	"Device.IP.Diagnostics.DownloadDiagnostics()":  {"DownloadURL"},
	"Device.IP.Diagnostics.UploadDiagnostics()":    {"UploadURL", "TestFileLength"},
	"Device.IP.Diagnostics.UDPEchoDiagnostics()":   {"Host", "Port"},
	"Device.DNS.Diagnostics.NSLookupDiagnostics()": {"HostName"},
}

// diagnosticCommand starts a diagnostic; handled is false for any other
// command. A missing mandatory argument is refused at once (7027); a
// NumberOfRepetitions that is no number fails in the OperationComplete.
// a.mu is held.
func (a *Agent) diagnosticCommand(from, command string, args map[string]string, key string) (req string, fail *uspmsg.OperateResp_OperationResult_CommandFailure, handled bool) {
	mandatory, ok := diagMandatory[command]
	if !ok {
		return "", nil, false
	}
	var missing []string
	for _, k := range mandatory {
		if _, ok := args[k]; !ok {
			missing = append(missing, k)
		}
	}
	if len(missing) > 0 {
		return "", &uspmsg.OperateResp_OperationResult_CommandFailure{ErrCode: usp.ErrCodeInvalidCommandArguments,
			ErrMsg: "missing mandatory argument " + strings.Join(missing, ",")}, true
	}
	req = a.newRequest(from, command, key)
	boot, ctx, client := a.boots, a.ctx, a.cfg.HTTPClient
	go func() {
		var out map[string]string
		var failure *uspmsg.Notify_OperationComplete_CommandFailure
		if n, ok := args["NumberOfRepetitions"]; ok {
			if _, err := strconv.Atoi(n); err != nil {
				failure = &uspmsg.Notify_OperationComplete_CommandFailure{ErrCode: usp.ErrCodeInvalidCommandArguments, ErrMsg: "NumberOfRepetitions is not a number"}
			}
		}
		if failure == nil {
			out = simdiag.Run(ctx, command, args, simdiag.Options{Client: client})
		}
		if ctx.Err() != nil {
			return
		}
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.closed {
			return
		}
		a.after(a.cfg.AsyncDelay, func() {
			if a.boots != boot {
				return // async commands are lost on reboot
			}
			a.endRequest(req)
			a.operationComplete(command, key, out, failure)
		})
	}()
	return req, nil, true
}
