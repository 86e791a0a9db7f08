// Package cwmp is Duet's TR-069 ACS adapter: an HTTP(S) server that runs
// CWMP sessions with CPEs, translates the bus's commands into CWMP RPCs,
// publishes device events, and sends connection requests. It speaks to the
// rest of Duet only through pkg/bus and keeps only in-flight session state.
//
// # Sessions (TR-069 §3.7)
//
// The first POST is an Inform, answered with InformResponse in the CPE's
// own cwmp namespace. The CPE's own requests (TransferComplete,
// AutonomousTransferComplete, GetRPCMethods, RequestDownload, Kicked,
// DUStateChangeComplete, AutonomousDUStateChangeComplete) are answered;
// unknown ones get fault 8000. After the empty POST the ACS asks the
// controller for work (bus AskWork, round 0), sends the commands one RPC at
// a time, publishes each result as a command_result event, and asks again
// with the results (round+1) until the answer is empty; then 204 ends the
// session. Sessions are found by TCP connection first and by the
// "session" cookie second (docs/cwmp-interop.md #9, #10).
//
// # cwmp_rpc arguments
//
// A cwmp_rpc command names any ACS→CPE method (GetRPCMethods,
// SetParameterValues, GetParameterValues, GetParameterNames,
// Set/GetParameterAttributes, AddObject, DeleteObject, Reboot, Download,
// Upload, FactoryReset, ScheduleInform, GetQueuedTransfers,
// GetAllQueuedTransfers, ScheduleDownload, CancelTransfer, ChangeDUState,
// SetVouchers, GetOptions). Its args map holds the RPC's elements by their
// TR-069 names:
//
//   - scalars by name: "CommandKey", "DelaySeconds", "FileType"; booleans
//     as true/false/1/0, dateTimes as xsd:dateTime;
//   - arrays of strings as "Name.N" counting from 1: "ParameterNames.1";
//   - arrays of structures as "Name.N.Field": "TimeWindowList.1.WindowStart",
//     "ParameterList.2.Name";
//   - a ParameterValueStruct's value as "ParameterList.N.Value" with its
//     xsi:type in "ParameterList.N.Type" (default string);
//   - a ChangeDUState operation's kind as "Operations.N.Kind" (or
//     "Operations.N.Type"): Install, Update or Uninstall.
//
// Unknown keys are refused with invalid_argument. The result's values use
// the same format for the response's elements.
//
// # Operate
//
// Reboot() and FactoryReset() at the root map to the RPCs of the same name;
// any …Download() (e.g. Device.DeviceInfo.FirmwareImage.1.Download()) to
// Download with FileType "1 Firmware Upgrade Image" unless a FileType
// argument says otherwise (async: completion is the transfer_complete event
// carrying the CommandKey). Diagnostics (Device.IP.Diagnostics.IPPing(),
// TraceRoute(), DownloadDiagnostics(), UploadDiagnostics(), and the TR-098
// InternetGatewayDevice.IPPingDiagnostics() etc.) write the input
// arguments and DiagnosticsState=Requested in one SetParameterValues; the
// results are read in the session that carries "8 DIAGNOSTICS COMPLETE"
// and published as diagnostics_complete (TR-069 diagnostics, TR-143).
//
// # Refused envelopes
//
// CWMP is SOAP 1.1 (TR-069 A.2.1) with methods in a urn:dslforum-org:cwmp-1-*
// namespace. An Envelope in any other namespace (SOAP 1.2, none, a made-up
// one), a method in another namespace, or anything but white space,
// comments or NULs after the Envelope is answered 400, counted in
// duet_cwmp_bad_requests_total{reason="envelope_namespace"|"cwmp_namespace"|
// "trailing_data"} and logged at warn (rate-limited), and
// nothing is published. The vendor quirks of testdata/cwmp (prefixes, no
// Header, CDATA, charsets, gzip, missing fields) are still accepted;
// testdata/cwmp/rejected holds what is not.
package cwmp
