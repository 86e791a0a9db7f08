package cpe

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/cwmp"
	"github.com/duet-dm/duet/pkg/sim/simdiag"
)

// supportedMethods is the GetRPCMethods answer.
var supportedMethods = []string{
	"GetRPCMethods", "SetParameterValues", "GetParameterValues", "GetParameterNames",
	"SetParameterAttributes", "GetParameterAttributes", "AddObject", "DeleteObject",
	"Reboot", "Download", "Upload", "FactoryReset", "ScheduleInform",
	"GetQueuedTransfers", "GetAllQueuedTransfers", "ScheduleDownload", "CancelTransfer", "ChangeDUState",
}

// handle answers one ACS request with its response or a Fault.
func (c *CPE) handle(req cwmp.Message) cwmp.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	ms := c.m.root + "ManagementServer."
	switch r := req.(type) {
	case *cwmp.GetRPCMethods:
		return &cwmp.GetRPCMethodsResponse{MethodList: supportedMethods}
	case *cwmp.GetParameterValues:
		l, f := c.m.getValues(r.ParameterNames)
		if f != nil {
			return f
		}
		return &cwmp.GetParameterValuesResponse{ParameterList: l}
	case *cwmp.SetParameterValues:
		oldURL, _ := c.m.get(ms + "URL")
		creds := setsCredentials(ms, r.ParameterList)
		if creds && c.opts.CredentialsFailure == "fault" {
			return fault(cwmp.FaultRequestDenied, "credentials are not writable here")
		}
		var keep map[string]string
		if creds && c.opts.CredentialsFailure == "ignore" {
			keep = map[string]string{}
			for _, n := range credentialParams {
				keep[ms+n], _ = c.m.get(ms + n)
			}
		}
		if f := c.m.setValues(r.ParameterList); f != nil {
			return f
		}
		for path, v := range keep {
			c.m.set(path, v)
		}
		if creds && keep == nil {
			// The CPE uses its new ACS credentials from its next session
			// (this one authenticated already).
			user, _ := c.m.get(ms + "Username")
			pass, _ := c.m.get(ms + "Password")
			c.actions = append(c.actions, func() {
				c.mu.Lock()
				c.acsUser, c.acsPass = user, pass
				c.mu.Unlock()
			})
		}
		c.m.set(ms+"ParameterKey", r.ParameterKey)
		for _, pv := range r.ParameterList {
			if strings.HasSuffix(pv.Name, "DiagnosticsState") && strings.TrimSpace(pv.Value.Data) == "Requested" {
				obj := strings.TrimSuffix(pv.Name, "DiagnosticsState")
				// Diagnostics run after the session (TR-069 diagnostics, TR-143).
				c.actions = append(c.actions, func() { c.runDiagnostics(obj) })
			}
		}
		if newURL, _ := c.m.get(ms + "URL"); newURL != oldURL {
			// A new ACS URL means a new bootstrap (TR-069 A.3.3.1, event codes).
			c.actions = append(c.actions, func() {
				c.mu.Lock()
				c.addEvent(cwmp.EventBootstrap, "")
				c.mu.Unlock()
			})
		}
		return &cwmp.SetParameterValuesResponse{Status: 0}
	case *cwmp.GetParameterNames:
		l, f := c.m.names(r.ParameterPath, r.NextLevel)
		if f != nil {
			return f
		}
		return &cwmp.GetParameterNamesResponse{ParameterList: l}
	case *cwmp.SetParameterAttributes:
		if f := c.m.setAttributes(r.ParameterList); f != nil {
			return f
		}
		return &cwmp.SetParameterAttributesResponse{}
	case *cwmp.GetParameterAttributes:
		l, f := c.m.getAttributes(r.ParameterNames)
		if f != nil {
			return f
		}
		return &cwmp.GetParameterAttributesResponse{ParameterList: l}
	case *cwmp.AddObject:
		n, f := c.m.addObject(r.ObjectName)
		if f != nil {
			return f
		}
		c.m.set(ms+"ParameterKey", r.ParameterKey)
		return &cwmp.AddObjectResponse{InstanceNumber: n, Status: 0}
	case *cwmp.DeleteObject:
		if f := c.m.deleteObject(r.ObjectName); f != nil {
			return f
		}
		c.m.set(ms+"ParameterKey", r.ParameterKey)
		return &cwmp.DeleteObjectResponse{Status: 0}
	case *cwmp.Reboot:
		key := r.CommandKey
		// The reboot happens after the session (TR-069 A.3.2).
		c.actions = append(c.actions, func() { c.reboot(key) })
		return &cwmp.RebootResponse{}
	case *cwmp.FactoryReset:
		c.actions = append(c.actions, c.factoryReset)
		return &cwmp.FactoryResetResponse{}
	case *cwmp.Download:
		if f := checkTransferURL(r.URL); f != nil {
			return f
		}
		c.queueTransfer(&transfer{kind: kindDownload, key: r.CommandKey, dl: *r, due: time.Now().Add(time.Duration(r.DelaySeconds) * time.Second)})
		return &cwmp.DownloadResponse{Status: 1}
	case *cwmp.ScheduleDownload:
		if f := checkTransferURL(r.URL); f != nil {
			return f
		}
		if len(r.TimeWindowList) == 0 || len(r.TimeWindowList) > 2 {
			return cwmp.NewFault(cwmp.FaultInvalidArguments, "TimeWindowList needs 1 or 2 windows")
		}
		dl := cwmp.Download{CommandKey: r.CommandKey, FileType: r.FileType, URL: r.URL, Username: r.Username,
			Password: r.Password, FileSize: r.FileSize, TargetFileName: r.TargetFileName}
		c.queueTransfer(&transfer{kind: kindScheduleDownload, key: r.CommandKey, dl: dl,
			due: time.Now().Add(time.Duration(r.TimeWindowList[0].WindowStart) * time.Second)})
		return &cwmp.ScheduleDownloadResponse{}
	case *cwmp.Upload:
		if f := checkTransferURL(r.URL); f != nil {
			return f
		}
		c.queueTransfer(&transfer{kind: kindUpload, key: r.CommandKey, ul: *r, due: time.Now().Add(time.Duration(r.DelaySeconds) * time.Second)})
		return &cwmp.UploadResponse{Status: 1}
	case *cwmp.ScheduleInform:
		if r.DelaySeconds == 0 {
			return cwmp.NewFault(cwmp.FaultInvalidArguments, "DelaySeconds must be positive")
		}
		c.scheduled = append(c.scheduled, scheduled{at: time.Now().Add(time.Duration(r.DelaySeconds) * time.Second), key: r.CommandKey})
		return &cwmp.ScheduleInformResponse{}
	case *cwmp.GetQueuedTransfers:
		resp := &cwmp.GetQueuedTransfersResponse{}
		for _, t := range c.transfers {
			resp.TransferList = append(resp.TransferList, cwmp.QueuedTransferStruct{CommandKey: t.key, State: t.state})
		}
		return resp
	case *cwmp.GetAllQueuedTransfers:
		resp := &cwmp.GetAllQueuedTransfersResponse{}
		for _, t := range c.transfers {
			q := cwmp.AllQueuedTransferStruct{CommandKey: t.key, State: t.state, IsDownload: t.kind != kindUpload}
			if t.kind == kindUpload {
				q.FileType = t.ul.FileType
			} else {
				q.FileType, q.FileSize, q.TargetFileName = t.dl.FileType, t.dl.FileSize, t.dl.TargetFileName
			}
			resp.TransferList = append(resp.TransferList, q)
		}
		return resp
	case *cwmp.CancelTransfer:
		for i, t := range c.transfers {
			if t.key == r.CommandKey {
				if t.state != 1 {
					return cwmp.NewFault(cwmp.FaultCancelNotPermitted, "")
				}
				c.transfers = append(c.transfers[:i], c.transfers[i+1:]...)
				return &cwmp.CancelTransferResponse{}
			}
		}
		return cwmp.NewFault(cwmp.FaultInvalidArguments, "no queued transfer with CommandKey "+r.CommandKey)
	case *cwmp.ChangeDUState:
		if len(r.Operations) == 0 {
			return cwmp.NewFault(cwmp.FaultInvalidArguments, "no operations")
		}
		ops, key := r.Operations, r.CommandKey
		c.actions = append(c.actions, func() { c.completeDU(ops, key) })
		return &cwmp.ChangeDUStateResponse{}
	}
	// SetVouchers, GetOptions, unknown and misdirected messages.
	return cwmp.NewFault(cwmp.FaultMethodNotSupported, req.MethodName()+" is not supported")
}

// credentialParams are the ManagementServer credentials
// (Options.CredentialsFailure).
var credentialParams = []string{"Username", "Password", "ConnectionRequestUsername", "ConnectionRequestPassword"}

func setsCredentials(ms string, list []cwmp.ParameterValueStruct) bool {
	for _, pv := range list {
		for _, n := range credentialParams {
			if pv.Name == ms+n {
				return true
			}
		}
	}
	return false
}

func checkTransferURL(raw string) *cwmp.Fault {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" {
		return cwmp.NewFault(cwmp.FaultInvalidArguments, "invalid URL")
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return cwmp.NewFault(cwmp.FaultUnsupportedProtocol, "")
	}
	return nil
}

// maxQueuedTransfers bounds the queue like GetQueuedTransfers' ≤16 (TR-069 A.3.2).
const maxQueuedTransfers = 16

func (c *CPE) queueTransfer(t *transfer) {
	t.state = 1
	if len(c.transfers) >= maxQueuedTransfers {
		// Refuse by reporting the failure later, as a busy CPE would.
		c.finishTransfer(t, cwmp.FaultResourcesExceeded, "transfer queue full", time.Now())
		return
	}
	c.transfers = append(c.transfers, t)
}

// afterSession runs what the ACS ordered for "after the session".
func (c *CPE) afterSession() {
	c.mu.Lock()
	acts := c.actions
	c.actions = nil
	c.mu.Unlock()
	for _, a := range acts {
		a()
	}
}

// goAway takes the CPE down for its restart. Caller holds c.mu.
func (c *CPE) goAway() {
	c.awayUntil = time.Now().Add(c.opts.RebootDowntime)
	c.gone = c.opts.RebootNeverReturns
}

func (c *CPE) reboot(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stats.reboots.Add(1)
	c.goAway()
	c.m.set(c.m.root+"DeviceInfo.UpTime", "0")
	c.addEvent(cwmp.EventBoot, "")
	c.addEvent(cwmp.EventMReboot, key)
}

// factoryReset restores the defaults: the next Inform is 0 BOOTSTRAP +
// 1 BOOT and queued work is lost (TR-069 A.3.2, docs/cwmp-interop.md #29).
func (c *CPE) factoryReset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.goAway()
	c.m = c.defaults.clone()
	c.acsUser, c.acsPass = c.opts.Username, c.opts.Password // factory credentials
	c.events, c.changed, c.transfers, c.pendingTC, c.pendingDU, c.scheduled = nil, nil, nil, nil, nil, nil
	c.addEvent(cwmp.EventBootstrap, "")
	c.addEvent(cwmp.EventBoot, "")
}

// runDiagnostics runs the diagnostic of object obj (IPPing, TraceRoute,
// Download, Upload, NSLookup, UDP echo; pkg/sim/simdiag: the transfer
// tests really fetch and send) outside the lock, then stores the results
// in the object, the hop and answer tables rebuilt, and announces
// "8 DIAGNOSTICS COMPLETE" (TR-069 Annex A DiagnosticsState, TR-143).
func (c *CPE) runDiagnostics(obj string) {
	c.mu.Lock()
	if v, _ := c.m.get(obj + "DiagnosticsState"); v != "Requested" {
		c.mu.Unlock()
		return // cancelled or overwritten
	}
	in := map[string]string{}
	for _, p := range c.m.sortedParams(obj) {
		in[strings.TrimPrefix(p, obj)] = c.m.params[p].value
	}
	tr098 := c.m.root == "InternetGatewayDevice."
	c.mu.Unlock()

	out := simdiag.Run(c.ctx, obj, in, simdiag.Options{Client: &http.Client{Transport: c.tr}, TR098: tr098})
	if c.ctx.Err() != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if v, _ := c.m.get(obj + "DiagnosticsState"); v != "Requested" {
		return // cancelled while it ran
	}
	for p := range c.m.params {
		if strings.HasPrefix(p, obj+"RouteHops.") || strings.HasPrefix(p, obj+"Result.") {
			delete(c.m.params, p)
		}
	}
	for k, v := range out {
		switch {
		case k == "Status":
			c.m.set(obj+"DiagnosticsState", v)
		case strings.HasPrefix(k, "RouteHops.") || strings.HasPrefix(k, "Result."):
			c.m.params[obj+k] = &param{typ: cwmp.TypeString, value: v}
		default:
			c.m.set(obj+k, v) // only what the object has
		}
	}
	c.m.reindex()
	c.addEvent(cwmp.EventDiagnosticsComplete, "")
}

func (c *CPE) completeDU(ops []cwmp.DUOperation, key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now().UTC()
	dc := &cwmp.DUStateChangeComplete{CommandKey: key}
	for i, op := range ops {
		r := cwmp.OpResultStruct{UUID: op.UUID, Version: op.Version, Resolved: true, StartTime: now, CompleteTime: now,
			CurrentState: "Installed", DeploymentUnitRef: c.m.root + "SoftwareModules.DeploymentUnit." + strconv.Itoa(i+1) + "."}
		if r.UUID == "" {
			h := sha256.Sum256([]byte(op.URL))
			x := hex.EncodeToString(h[:16])
			r.UUID = x[:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32]
		}
		if op.Kind == cwmp.DUUninstall {
			r.CurrentState = "Uninstalled"
		}
		if r.Version == "" {
			r.Version = "1.0"
		}
		dc.Results = append(dc.Results, r)
	}
	c.pendingDU = append(c.pendingDU, dc)
	c.addEvent(cwmp.EventDUStateChangeComplete, "")
	c.addEvent(cwmp.EventMChangeDUState, key)
}

// runDueTransfers performs every queued transfer whose time has come and
// queues its TransferComplete (TR-069 A.3.2 Download/Upload).
func (c *CPE) runDueTransfers() {
	for {
		c.mu.Lock()
		var t *transfer
		for _, x := range c.transfers {
			if x.state == 1 && !time.Now().Before(x.due) {
				t = x
				break
			}
		}
		if t == nil {
			c.mu.Unlock()
			return
		}
		t.state = 2
		fwFail := c.opts.FirmwareFailure
		var upload []byte
		if t.kind == kindUpload {
			upload = c.dump()
		}
		c.mu.Unlock()

		start := time.Now().UTC()
		var code uint32
		var msg string
		var body []byte
		switch {
		case c.opts.TransferFault != 0:
			code, msg = c.opts.TransferFault, c.opts.TransferFaultString
		case t.kind == kindUpload:
			code, msg = c.doUpload(t.ul, upload)
		case t.dl.FileType == cwmp.FileTypeFirmware && fwFail == "not_found":
			dl := t.dl
			dl.URL += ".missing" // the rigged image is not where it was said to be
			body, code, msg = c.doDownload(dl)
			if code == 0 {
				code, msg = cwmp.FaultFileAccess, "404 Not Found"
			}
		default:
			body, code, msg = c.doDownload(t.dl)
			if code == 0 && t.dl.FileType == cwmp.FileTypeFirmware && fwFail == "checksum" {
				code, msg = cwmp.FaultFileCorrupted, "image signature check failed"
			}
		}
		if c.ctx.Err() != nil {
			return // shutting down: the transfer is lost, as on a power cut
		}
		c.mu.Lock()
		for i, x := range c.transfers {
			if x == t {
				c.transfers = append(c.transfers[:i], c.transfers[i+1:]...)
				break
			}
		}
		if code == 0 && t.kind != kindUpload && t.dl.FileType == "3 Vendor Configuration File" {
			c.applyConfig(body)
		}
		if code == 0 && t.kind != kindUpload && t.dl.FileType == cwmp.FileTypeFirmware && fwFail == "boot_old" {
			c.m.set(c.m.root+"DeviceInfo.UpTime", "0")
			c.addEvent(cwmp.EventBoot, "") // it rebooted, into the old image
		} else if code == 0 && t.kind != kindUpload && t.dl.FileType == cwmp.FileTypeFirmware && c.opts.FirmwareUpdatesVersion {
			v := firstLine(body)
			if v == "" {
				v = t.dl.TargetFileName
			}
			if v == "" {
				v = fmt.Sprintf("fw-%d", len(body))
			}
			c.m.set(c.m.root+"DeviceInfo.SoftwareVersion", v)
			c.m.set(c.m.root+"DeviceInfo.UpTime", "0")
			c.addEvent(cwmp.EventBoot, "") // applying an image reboots the device
		}
		c.finishTransfer(t, code, msg, start)
		c.mu.Unlock()
	}
}

// finishTransfer queues the TransferComplete and its events. Caller holds c.mu.
func (c *CPE) finishTransfer(t *transfer, code uint32, msg string, start time.Time) {
	tc := &cwmp.TransferComplete{CommandKey: t.key, StartTime: start, CompleteTime: time.Now().UTC()}
	tc.FaultStruct = cwmp.FaultStruct{FaultCode: code, FaultString: msg}
	if code != 0 && msg == "" {
		tc.FaultStruct.FaultString = cwmp.FaultMessage(code)
	}
	c.pendingTC = append(c.pendingTC, tc)
	c.addEvent(cwmp.EventTransferComplete, "")
	switch t.kind {
	case kindDownload:
		c.addEvent(cwmp.EventMDownload, t.key)
	case kindUpload:
		c.addEvent(cwmp.EventMUpload, t.key)
	case kindScheduleDownload:
		c.addEvent(cwmp.EventMScheduleDownload, t.key)
	}
}

// maxDownload bounds what the simulator keeps of a downloaded file.
const maxDownload = 64 << 20

// doDownload GETs the file and maps failures to 9010–9019 (TR-069 A.5.2).
func (c *CPE) doDownload(d cwmp.Download) (body []byte, code uint32, msg string) {
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSpace(d.URL), nil)
	if err != nil {
		return nil, cwmp.FaultDownloadFailure, err.Error()
	}
	if d.Username != "" {
		req.SetBasicAuth(d.Username, d.Password)
	}
	resp, err := (&http.Client{Transport: c.tr}).Do(req)
	if err != nil {
		return nil, cwmp.FaultFileServerUnreachable, err.Error()
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, cwmp.FaultTransferAuthFailure, resp.Status
	case resp.StatusCode == http.StatusNotFound:
		return nil, cwmp.FaultFileAccess, resp.Status
	case resp.StatusCode != http.StatusOK:
		return nil, cwmp.FaultDownloadFailure, resp.Status
	}
	body, err = io.ReadAll(io.LimitReader(resp.Body, maxDownload+1))
	if err != nil {
		return nil, cwmp.FaultDownloadIncomplete, err.Error()
	}
	if len(body) > maxDownload {
		return nil, cwmp.FaultDownloadFailure, "file too large for the simulator"
	}
	if d.FileSize > 0 && uint32(len(body)) != d.FileSize {
		return nil, cwmp.FaultFileCorrupted, fmt.Sprintf("got %d bytes, FileSize says %d", len(body), d.FileSize)
	}
	return body, 0, ""
}

func (c *CPE) doUpload(u cwmp.Upload, data []byte) (uint32, string) {
	ctx, cancel := context.WithTimeout(c.ctx, 5*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, strings.TrimSpace(u.URL), strings.NewReader(string(data)))
	if err != nil {
		return cwmp.FaultUploadFailure, err.Error()
	}
	req.Header.Set("Content-Type", "text/plain")
	if u.Username != "" {
		req.SetBasicAuth(u.Username, u.Password)
	}
	resp, err := (&http.Client{Transport: c.tr}).Do(req)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) {
			return cwmp.FaultFileServerUnreachable, err.Error()
		}
		return cwmp.FaultUploadFailure, err.Error()
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK, http.StatusCreated, http.StatusNoContent:
		return 0, ""
	case http.StatusUnauthorized, http.StatusForbidden:
		return cwmp.FaultTransferAuthFailure, resp.Status
	}
	return cwmp.FaultUploadFailure, resp.Status
}

// applyConfig sets the writable parameters a configuration file (a dump,
// "path=value" lines) names. Caller holds c.mu.
func (c *CPE) applyConfig(body []byte) {
	for _, line := range strings.Split(string(body), "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		if p, exists := c.m.params[k]; exists && p.writable {
			c.m.set(k, v)
		}
	}
}
