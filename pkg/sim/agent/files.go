package agent

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/duet-dm/duet/proto/usp/uspmsg"

	"github.com/duet-dm/duet/pkg/usp"
)

// Firmware images and vendor configuration files, as TR-181 agents model
// them (Device.DeviceInfo.FirmwareImage.{i}., VendorConfigFile.{i}.):
// two image slots, the active one named by ActiveFirmwareImage;
// Download() fetches into an inactive slot, checks the CheckSum, and with
// AutoActivate boots the new image (Boot! with FirmwareUpdated true and
// the Download()'s CommandKey). Backup() uploads the configuration with an
// HTTP PUT; Restore() fetches one and applies it.

// Firmware failure modes a test can rig (Config.FirmwareFailure).
const (
	FirmwareBadChecksum = "checksum"  // the image does not match its CheckSum: ValidationFailed
	FirmwareNotFound    = "not_found" // the server answers 404
	FirmwareBootOld     = "boot_old"  // the new image fails to boot; the agent comes back on the old one
)

// maxFile bounds what the simulator keeps of a downloaded file.
const maxFile = 64 << 20

// fileSchema is the data model of images and configuration files.
var fileSchema = []objDef{
	{path: "Device.DeviceInfo.FirmwareImage.{i}.", multi: true, keys: [][]string{{"Alias"}},
		params: []paramDef{
			rw("Alias", typeString, ""), ro("Name", typeString), ro("Version", typeString),
			ro("Available", typeBool), ro("Status", typeString), ro("BootFailureLog", typeString),
		},
		commands: []cmdDef{
			{name: "Download()", async: true, inputs: []string{"URL", "AutoActivate", "Username", "Password", "FileSize", "CheckSumAlgorithm", "CheckSum"}},
			{name: "Activate()", async: true, inputs: []string{"TimeWindow"}},
		}},
	{path: "Device.DeviceInfo.VendorConfigFile.{i}.", multi: true, keys: [][]string{{"Alias"}},
		params: []paramDef{rw("Alias", typeString, ""), ro("Name", typeString), ro("Version", typeString), ro("Date", typeString), ro("Description", typeString)},
		commands: []cmdDef{
			{name: "Backup()", async: true, inputs: []string{"URL", "Username", "Password"}},
			{name: "Restore()", async: true, inputs: []string{"URL", "Username", "Password", "FileSize", "TargetFileName", "CheckSumAlgorithm", "CheckSum"}},
		}},
}

// addFileModel puts the factory images and configuration file in m.
func (a *Agent) addFileModel(m *model) {
	for i, st := range []string{"Active", "NoImage"} {
		img := m.addInstance("Device.DeviceInfo.FirmwareImage.")
		m.values[img+"Alias"] = fmt.Sprintf("cpe-%d", i+1)
		m.values[img+"Status"] = st
		m.values[img+"BootFailureLog"] = ""
		if st == "Active" {
			m.values[img+"Name"], m.values[img+"Version"], m.values[img+"Available"] = "factory.img", a.cfg.SoftwareVersion, "true"
		} else {
			m.values[img+"Name"], m.values[img+"Version"], m.values[img+"Available"] = "", "", "false"
		}
	}
	m.values["Device.DeviceInfo.ActiveFirmwareImage"] = "Device.DeviceInfo.FirmwareImage.1"
	m.values["Device.DeviceInfo.BootFirmwareImage"] = "Device.DeviceInfo.FirmwareImage.1"
	cf := m.addInstance("Device.DeviceInfo.VendorConfigFile.")
	m.values[cf+"Alias"] = "cpe-1"
	m.values[cf+"Name"] = "running-config"
	m.values[cf+"Version"] = "1"
	m.values[cf+"Date"] = "0001-01-01T00:00:00Z"
	m.values[cf+"Description"] = "the agent's configuration"
}

// fetched is the outcome of a transfer run off the agent's lock.
type fetched struct {
	body  []byte
	fault string // "" on success
	start time.Time
}

// fetch GETs url with the agent's client (never holding a.mu).
func (a *Agent) fetch(ctx context.Context, url, user, pass string) fetched {
	f := fetched{start: time.Now().UTC()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		f.fault = err.Error()
		return f
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	res, err := a.cfg.HTTPClient.Do(req)
	if err != nil {
		f.fault = err.Error()
		return f
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		f.fault = "download failed: " + res.Status
		return f
	}
	f.body, err = io.ReadAll(io.LimitReader(res.Body, maxFile+1))
	if err != nil || len(f.body) > maxFile {
		f.fault = "download incomplete"
	}
	return f
}

// inBackground runs work off the lock, then apply under it (unless the
// agent closed, or rebooted meanwhile: async commands are lost on reboot).
func (a *Agent) inBackground(work func(ctx context.Context) fetched, apply func(fetched)) {
	boot := a.boots
	ctx := a.ctx
	go func() {
		f := work(ctx)
		// after touches the agent's timers: it runs under a.mu, like
		// every other caller.
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.closed {
			return
		}
		a.after(0, func() {
			if a.boots == boot {
				apply(f)
			}
		})
	}()
}

// newRequest creates the Request row of an async command.
func (a *Agent) newRequest(from, command, key string) string {
	before, work := a.m, a.m.clone()
	req := work.addInstance("Device.LocalAgent.Request.")
	work.values[req+"Originator"] = from
	work.values[req+"Command"] = command
	work.values[req+"CommandKey"] = key
	work.values[req+"Status"] = "Active"
	a.commit(before, work)
	return req
}

// endRequest deletes it.
func (a *Agent) endRequest(req string) {
	before, work := a.m, a.m.clone()
	work.deleteObject(req)
	a.commit(before, work)
}

func (a *Agent) setValues(vals map[string]string) {
	before, work := a.m, a.m.clone()
	for k, v := range vals {
		work.values[k] = v
	}
	a.commit(before, work)
}

func cmdFail(msg string) *uspmsg.Notify_OperationComplete_CommandFailure {
	return &uspmsg.Notify_OperationComplete_CommandFailure{ErrCode: usp.ErrCodeCommandFailure, ErrMsg: msg}
}

// transferComplete sends Device.LocalAgent.TransferComplete! (TR-181).
func (a *Agent) transferComplete(command, key, url, kind string, start time.Time, fault string) {
	args := map[string]string{"Command": command, "CommandKey": key, "Requestor": "", "TransferType": kind,
		"Affected": "", "TransferURL": url, "StartTime": start.Format(time.RFC3339), "CompleteTime": time.Now().UTC().Format(time.RFC3339),
		"FaultCode": "0", "FaultString": ""}
	if fault != "" {
		args["FaultCode"], args["FaultString"] = fmt.Sprint(usp.ErrCodeCommandFailure), fault
	}
	for _, s := range a.matching("Event", "Device.LocalAgent.TransferComplete!") {
		a.sendNotify(s.id, s.retry, &uspmsg.Notify{Notification: &uspmsg.Notify_Event_{Event: &uspmsg.Notify_Event{
			ObjPath: "Device.LocalAgent.", EventName: "TransferComplete!", Params: args}}})
	}
}

// fileCommand starts Download(), Activate(), Backup() or Restore() on obj;
// handled is false for any other command. a.mu is held.
func (a *Agent) fileCommand(from, obj, name string, args map[string]string, key string) (req string, fail string, handled bool) {
	command := obj + name
	switch {
	case strings.HasPrefix(obj, "Device.DeviceInfo.FirmwareImage.") && name == "Download()":
		if strings.TrimSuffix(obj, ".") == a.m.values["Device.DeviceInfo.ActiveFirmwareImage"] {
			return "", "cannot download into the active image", true
		}
		if args["URL"] == "" {
			return "", "URL is required", true
		}
		req = a.newRequest(from, command, key)
		a.setValues(map[string]string{obj + "Status": "Downloading", obj + "Available": "false"})
		url := args["URL"]
		if a.cfg.FirmwareFailure == FirmwareNotFound {
			url += ".missing" // the rigged image is not where it was said to be
		}
		a.inBackground(func(ctx context.Context) fetched { return a.fetch(ctx, url, args["Username"], args["Password"]) }, func(f fetched) {
			a.endRequest(req)
			if f.fault == "" && args["FileSize"] != "" && args["FileSize"] != fmt.Sprint(len(f.body)) {
				f.fault = fmt.Sprintf("got %d bytes, FileSize says %s", len(f.body), args["FileSize"])
			}
			if f.fault != "" {
				a.setValues(map[string]string{obj + "Status": "DownloadFailed"})
				a.transferComplete(command, key, args["URL"], "Download", f.start, f.fault)
				a.operationComplete(command, key, nil, cmdFail(f.fault))
				return
			}
			sum := sha256.Sum256(f.body)
			got := hex.EncodeToString(sum[:])
			if a.cfg.FirmwareFailure == FirmwareBadChecksum {
				got = strings.Repeat("0", 64)
			}
			if want := strings.ToLower(args["CheckSum"]); want != "" && want != got {
				msg := "image checksum mismatch"
				a.setValues(map[string]string{obj + "Status": "ValidationFailed"})
				a.transferComplete(command, key, args["URL"], "Download", f.start, msg)
				a.operationComplete(command, key, nil, cmdFail(msg))
				return
			}
			version := firstLine(f.body)
			a.setValues(map[string]string{obj + "Status": "Available", obj + "Available": "true", obj + "Version": version,
				obj + "Name": lastSegment(args["URL"])})
			a.transferComplete(command, key, args["URL"], "Download", f.start, "")
			a.operationComplete(command, key, map[string]string{}, nil)
			if isTrue(args["AutoActivate"]) {
				a.activate(obj, key)
			}
		})
		return req, "", true
	case strings.HasPrefix(obj, "Device.DeviceInfo.FirmwareImage.") && name == "Activate()":
		if a.m.values[obj+"Available"] != "true" {
			return "", "the image holds nothing to activate", true
		}
		req = a.newRequest(from, command, key)
		a.after(0, func() {
			a.endRequest(req)
			a.operationComplete(command, key, map[string]string{}, nil)
			a.activate(obj, key)
		})
		return req, "", true
	case strings.HasPrefix(obj, "Device.DeviceInfo.VendorConfigFile.") && name == "Backup()":
		if args["URL"] == "" {
			return "", "URL is required", true
		}
		req = a.newRequest(from, command, key)
		data := a.dumpConfig()
		a.inBackground(func(ctx context.Context) fetched {
			f := fetched{start: time.Now().UTC()}
			r, err := http.NewRequestWithContext(ctx, http.MethodPut, args["URL"], bytes.NewReader(data))
			if err == nil {
				if args["Username"] != "" {
					r.SetBasicAuth(args["Username"], args["Password"])
				}
				var res *http.Response
				if res, err = a.cfg.HTTPClient.Do(r); err == nil {
					res.Body.Close()
					if res.StatusCode >= 300 {
						f.fault = "upload failed: " + res.Status
					}
				}
			}
			if err != nil {
				f.fault = err.Error()
			}
			return f
		}, func(f fetched) {
			a.endRequest(req)
			a.transferComplete(command, key, args["URL"], "Upload", f.start, f.fault)
			if f.fault != "" {
				a.operationComplete(command, key, nil, cmdFail(f.fault))
				return
			}
			a.operationComplete(command, key, map[string]string{}, nil)
		})
		return req, "", true
	case strings.HasPrefix(obj, "Device.DeviceInfo.VendorConfigFile.") && name == "Restore()":
		if args["URL"] == "" {
			return "", "URL is required", true
		}
		req = a.newRequest(from, command, key)
		a.inBackground(func(ctx context.Context) fetched {
			return a.fetch(ctx, args["URL"], args["Username"], args["Password"])
		}, func(f fetched) {
			a.endRequest(req)
			if f.fault == "" {
				f.fault = a.applyConfig(f.body)
			}
			a.transferComplete(command, key, args["URL"], "Download", f.start, f.fault)
			if f.fault != "" {
				a.operationComplete(command, key, nil, cmdFail(f.fault))
				return
			}
			a.setValues(map[string]string{obj + "Date": time.Now().UTC().Format(time.RFC3339)})
			a.operationComplete(command, key, map[string]string{}, nil)
		})
		return req, "", true
	}
	return "", "", false
}

// activate boots image obj (TR-181 Activate(), or AutoActivate): the
// agent restarts; unless rigged to fail, it comes back running it.
func (a *Agent) activate(obj, key string) {
	img := strings.TrimSuffix(obj, ".")
	old := a.m.values["Device.DeviceInfo.ActiveFirmwareImage"] + "."
	if a.cfg.FirmwareFailure == FirmwareBootOld {
		a.setValues(map[string]string{obj + "Status": "ActivationFailed", obj + "BootFailureLog": "image failed to boot; fell back to " + a.m.values[old+"Version"]})
		a.bootFirmwareUpdated = false
		a.reboot("LocalReboot", key, false)
		return
	}
	a.setValues(map[string]string{
		old + "Status": "Available", obj + "Status": "Active",
		"Device.DeviceInfo.ActiveFirmwareImage": img, "Device.DeviceInfo.BootFirmwareImage": img,
		"Device.DeviceInfo.SoftwareVersion": a.m.values[obj+"Version"],
	})
	a.bootFirmwareUpdated = true
	a.reboot("RemoteReboot", key, false)
}

// dumpConfig renders the writable configuration: "path=value" lines.
func (a *Agent) dumpConfig() []byte {
	var b bytes.Buffer
	for _, p := range sortedKeys(a.m.values) {
		if strings.HasPrefix(p, "Device.WiFi.SSID.") || strings.HasPrefix(p, "Device.NAT.PortMapping.") || p == "Device.DeviceInfo.ProvisioningCode" {
			fmt.Fprintf(&b, "%s=%s\n", p, a.m.values[p])
		}
	}
	return b.Bytes()
}

// applyConfig sets the values of a dump on parameters that exist; it
// returns a fault for a file that is not one.
func (a *Agent) applyConfig(body []byte) string {
	vals := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || !strings.HasPrefix(k, "Device.") {
			return "not a configuration file of this device"
		}
		if _, exists := a.m.values[k]; exists {
			vals[k] = v
		}
	}
	a.setValues(vals)
	return ""
}

func firstLine(b []byte) string {
	line, _, _ := bytes.Cut(b, []byte("\n"))
	s := strings.TrimSpace(string(line))
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}

func lastSegment(u string) string {
	if i := strings.LastIndexByte(u, '/'); i >= 0 {
		return u[i+1:]
	}
	return u
}

func isTrue(s string) bool { return s == "true" || s == "1" }

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// SetFirmwareFailure changes how the next firmware downloads fail
// (Config.FirmwareFailure; "" makes them work).
func (a *Agent) SetFirmwareFailure(mode string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cfg.FirmwareFailure = mode
}
