package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/duet-dm/duet/controller/files"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// Operations on the file repository (issue 14 §3, §5), one API over both
// protocols:
//
//   - firmware_upgrade (file_id of a firmware file): CWMP Download with
//     FileType "1 Firmware Upgrade Image" (TR-069 A.3.2.8), ending on its
//     TransferComplete; USP Device.DeviceInfo.FirmwareImage.{i}.Download()
//     into the inactive image with AutoActivate (TR-181), ending on the
//     Boot! that follows the activation. Either way the task then checks
//     the version the device runs against the file's: a device back on
//     its old image fails with version_unchanged.
//   - backup_config: CWMP Upload with FileType "1 Vendor Configuration
//     File" (TR-069 A.4.1.5); USP VendorConfigFile.{i}.Backup(). The device
//     delivers to the file listener; the file lands in the repository
//     under the device.
//   - restore_config (file_id of a vendor_config file): CWMP Download
//     with FileType "3 Vendor Configuration File"; USP
//     VendorConfigFile.{i}.Restore().
//
// Every URL handed to a device is the file listener's, signed for that
// file (or upload) and device (controller/files) when the task is
// dispatched: the task keeps the URL with files.TokenPlaceholder for its
// token, so nobody reading tasks gets a credential, and the token's life
// starts when the device is told, not when the task was queued.

// fileOperations need the file repository.
var fileOperations = map[string]string{ // operation -> the file type it takes ("" none)
	"firmware_upgrade": store.FileFirmware,
	"restore_config":   store.FileVendorConfig,
	"backup_config":    "",
}

// resolvedFile is what create learned for a file operation before the
// command is built.
type resolvedFile struct {
	file store.File
	url  string
	// image is the USP firmware image instance to download into
	// ("Device.DeviceInfo.FirmwareImage.2.").
	image string
}

// resolveFile checks a file operation's file and makes its URL.
func (q *TaskQueue) resolveFile(ctx context.Context, r *TaskRequest, d devicemodel.Device) error {
	want, ok := fileOperations[r.Operation]
	if !ok {
		return nil
	}
	if q.o.FileURLs == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "%s needs the file repository, which this controller does not run", r.Operation)
	}
	res := &resolvedFile{}
	if want == "" {
		res.url = q.o.FileURLs.UploadShape()
		r.resolved = res
		return nil
	}
	if r.FileID == "" {
		return invalid("%s needs file_id", r.Operation)
	}
	f, err := q.o.Store.FindFile(ctx, r.FileID)
	if devicemodel.ErrorCode(err) == devicemodel.CodeNotFound {
		return invalid("file_id %q: no such file", r.FileID)
	}
	if err != nil {
		return err
	}
	if f.Type != want {
		return invalid("file_id %q is a %s file; %s takes a %s file", r.FileID, f.Type, r.Operation, want)
	}
	if msg := fileFits(f, d); msg != "" {
		return invalid("file_id %q is not for this device: %s", r.FileID, msg)
	}
	res.file = f
	res.url = q.o.FileURLs.DownloadShape(f.Name)
	// Kept in the request: the task shows where the device is sent (the
	// token is made at dispatch, signTransfer), and an
	// AutonomousTransferComplete to it finds the task (completion.go).
	r.URL = res.url
	if r.Operation == "firmware_upgrade" {
		r.Version = f.Version
		if d.Protocol == devicemodel.ProtocolUSP {
			img, err := q.inactiveImage(ctx, d)
			if err != nil {
				return err
			}
			res.image = img
		}
	}
	r.resolved = res
	return nil
}

// signTransfer puts a freshly signed URL into the command of a file
// operation being dispatched, in place of the stored one with
// files.TokenPlaceholder. A failure to sign is reported as a command that
// never ran (the task goes back to the queue), a file gone as not_found.
func (q *TaskQueue) signTransfer(ctx context.Context, t store.Task, cmd *duetv1.Command) error {
	if t.Operation == "diagnostic" {
		return q.signDiagnostic(t, cmd)
	}
	if _, ok := fileOperations[t.Operation]; !ok {
		return nil
	}
	args := transferArgs(cmd)
	if !strings.Contains(args["URL"], files.TokenPlaceholder) {
		return nil // stored with its token, before tokens were made at dispatch
	}
	if q.o.FileURLs == nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "this controller does not run the file repository, so %s was not sent before the command ran", t.Operation)
	}
	if t.Operation == "backup_config" {
		args["URL"] = q.o.FileURLs.Upload(store.FileVendorConfig, t.DeviceID)
		return nil
	}
	var r TaskRequest
	if err := json.Unmarshal(t.Request, &r); err != nil {
		return devicemodel.Errorf(devicemodel.CodeInternal, "stored request is undecodable: %v", err)
	}
	f, err := q.o.Store.FindFile(ctx, r.FileID)
	if devicemodel.ErrorCode(err) == devicemodel.CodeNotFound {
		return devicemodel.Errorf(devicemodel.CodeNotFound, "file %s is gone", r.FileID)
	}
	if err != nil {
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "signing the URL of file %s failed before the command ran: %v", r.FileID, err)
	}
	args["URL"] = q.o.FileURLs.Download(f.ID, f.Name, t.DeviceID)
	return nil
}

// transferArgs are the arguments of a file operation's command, where
// its URL is (fileCommand).
func transferArgs(cmd *duetv1.Command) map[string]string {
	if op := cmd.GetOperate(); op != nil && op.InputArgs != nil {
		return op.InputArgs
	}
	if rpc := cmd.GetCwmpRpc(); rpc != nil && rpc.Args != nil {
		return rpc.Args
	}
	return map[string]string{}
}

// fileFits says why a file does not target a device ("" when it does):
// its product classes, OUIs and data model, when given, must match.
func fileFits(f store.File, d devicemodel.Device) string {
	in := func(list []string, v string) bool {
		if len(list) == 0 {
			return true
		}
		for _, x := range list {
			if strings.EqualFold(x, v) {
				return true
			}
		}
		return false
	}
	switch {
	case !in(f.ProductClasses, d.ProductClass):
		return fmt.Sprintf("product class %q is not one of %v", d.ProductClass, f.ProductClasses)
	case !in(f.OUIs, d.OUI):
		return fmt.Sprintf("OUI %q is not one of %v", d.OUI, f.OUIs)
	case f.DataModel != "" && d.DataModel != "" && !strings.EqualFold(strings.TrimSuffix(f.DataModel, "."), strings.TrimSuffix(d.DataModel, ".")):
		return fmt.Sprintf("data model %q is not %q", d.DataModel, f.DataModel)
	}
	return ""
}

var imageStatus = regexp.MustCompile(`^(.*DeviceInfo\.FirmwareImage\.)(\d+)\.Status$`)

// inactiveImage picks the USP firmware image to download into from the
// parameter cache: never the active one (Device.DeviceInfo.ActiveFirmwareImage,
// or an image whose Status is Active), preferring an image with nothing
// worth keeping (NoImage, a failed download), then the lowest instance
// (TR-181 Device.DeviceInfo.FirmwareImage.{i}.).
func (q *TaskQueue) inactiveImage(ctx context.Context, d devicemodel.Device) (string, error) {
	root := d.DataModel
	if root == "" {
		root = "Device."
	}
	active := root + "DeviceInfo.ActiveFirmwareImage"
	vals, _, err := q.o.Store.FindParameterValuesAndTypes(ctx, []string{d.ID}, []string{active}, false, root+"DeviceInfo.FirmwareImage.")
	if err != nil {
		return "", err
	}
	pv := vals[d.ID]
	activeRef := strings.TrimSuffix(pv[active], ".") + "."
	type cand struct {
		path string
		n    int
		rank int
	}
	var cs []cand
	for p, status := range pv {
		m := imageStatus.FindStringSubmatch(p)
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[2])
		path := m[1] + m[2] + "."
		if path == activeRef || status == "Active" {
			continue
		}
		rank := 1
		switch status {
		case "NoImage", "DownloadFailed", "ValidationFailed", "InstallationFailed", "ActivationFailed":
			rank = 0
		case "Downloading", "Validating", "Installing":
			rank = 2 // another download under way: the last resort
		}
		cs = append(cs, cand{path, n, rank})
	}
	if len(cs) == 0 {
		if len(pv) == 0 {
			return "", devicemodel.Errorf(devicemodel.CodeUnavailable, "Duet holds no reading of the device's firmware images (%sDeviceInfo.FirmwareImage.); read them first (a get task of that path), so the active image is never overwritten", root)
		}
		return "", devicemodel.Errorf(devicemodel.CodeUnavailable, "the device has no inactive firmware image to download into (%sDeviceInfo.FirmwareImage.)", root)
	}
	sort.Slice(cs, func(i, j int) bool {
		if cs[i].rank != cs[j].rank {
			return cs[i].rank < cs[j].rank
		}
		return cs[i].n < cs[j].n
	})
	return cs[0].path, nil
}

// fileCommand sets cmd's operation for a file operation (buildCommand).
// Without a resolved file (a task batch's validation) it only checks
// the request's shape.
func fileCommand(cmd *duetv1.Command, r *TaskRequest, d devicemodel.Device, root, key string) error {
	if fileOperations[r.Operation] != "" && r.FileID == "" {
		return invalid("%s needs file_id", r.Operation)
	}
	res := r.resolved
	if res == nil {
		res = &resolvedFile{url: "http://unresolved.invalid/", image: root + "DeviceInfo.FirmwareImage.2."}
	}
	size := func(args map[string]string) {
		if res.file.Size > 0 && res.file.Size <= math.MaxUint32 {
			args["FileSize"] = strconv.FormatInt(res.file.Size, 10)
		}
	}
	usp := d.Protocol == devicemodel.ProtocolUSP
	operate := func(command string, args map[string]string) {
		cmd.Op = &duetv1.Command_Operate{Operate: &duetv1.OperateRequest{Command: command, CommandKey: key, InputArgs: args}}
	}
	switch r.Operation {
	case "firmware_upgrade":
		args := map[string]string{"URL": res.url}
		size(args)
		if usp {
			// TR-181 FirmwareImage.{i}.Download(): AutoActivate makes the
			// agent boot the new image once it is stored and checked.
			args["AutoActivate"] = "true"
			if res.file.SHA256 != "" {
				args["CheckSumAlgorithm"], args["CheckSum"] = "SHA-256", res.file.SHA256
			}
			operate(res.image+"Download()", args)
		} else {
			args["FileType"] = "1 Firmware Upgrade Image"
			args["TargetFileName"] = res.file.Name
			operate("Download()", args)
		}
	case "restore_config":
		args := map[string]string{"URL": res.url}
		size(args)
		if usp {
			operate(root+"DeviceInfo.VendorConfigFile.1.Restore()", args)
		} else {
			args["FileType"] = "3 Vendor Configuration File"
			args["TargetFileName"] = res.file.Name
			operate("Download()", args)
		}
	case "backup_config":
		if usp {
			operate(root+"DeviceInfo.VendorConfigFile.1.Backup()", map[string]string{"URL": res.url})
		} else {
			cmd.Op = &duetv1.Command_CwmpRpc{CwmpRpc: &duetv1.CwmpRpc{Method: "Upload",
				Args: map[string]string{"CommandKey": key, "FileType": "1 Vendor Configuration File", "URL": res.url}}}
		}
	}
	return nil
}

// bootVersion is the software version a completion reports: USP Boot!
// carries it in its ParameterMap (TR-181 Device.Boot!) when the agent was
// configured to; otherwise the registry's, which the Inform (CWMP) or
// the Boot! parameters updated before the completion was handled.
func bootVersion(c Completion, root string) string {
	if b := c.Event.GetBoot(); b != nil {
		var m map[string]string
		if json.Unmarshal([]byte(b.GetArgs()["ParameterMap"]), &m) == nil {
			if v, ok := m[root+"DeviceInfo.SoftwareVersion"]; ok {
				return v
			}
		}
	}
	return ""
}

// firmwareOutcome finishes a firmware_upgrade whose transfer (or USP
// activation boot) succeeded: the version the device runs must be the
// file's, or the task fails with version_unchanged.
func (q *TaskQueue) firmwareOutcome(ctx context.Context, t store.Task, c Completion, o store.TaskOutcome) store.TaskOutcome {
	var req TaskRequest
	if json.Unmarshal(t.Request, &req) != nil || req.Version == "" {
		return o
	}
	d, err := q.o.Store.FindDeviceByID(ctx, t.DeviceID)
	if err != nil {
		q.log.Warn("checking a firmware upgrade's version failed", "task", t.ID, "device", t.DeviceID, "err", err)
		return o
	}
	root := d.DataModel
	if root == "" {
		root = "Device."
	}
	got := bootVersion(c, root)
	if got == "" {
		got = d.SoftwareVersion
	}
	if got == req.Version {
		return o
	}
	o.State = store.TaskFailed
	o.ErrorCode = devicemodel.CodeVersionUnchanged.String()
	o.ErrorMessage = fmt.Sprintf("the device reports software version %q after the upgrade; the file is version %q", got, req.Version)
	return o
}

// endAwaited ends t on completion c, or, for a USP firmware_upgrade whose
// download completed, keeps it waiting for the Boot! of the activation
// (TR-181 FirmwareImage.{i}.Download() with AutoActivate). It reports
// whether the task ended.
func (q *TaskQueue) endAwaited(ctx context.Context, t store.Task, c Completion) bool {
	o := completedOutcome(t, c)
	if t.Operation == "firmware_upgrade" && o.State == store.TaskSucceeded {
		if t.SubState == store.SubStateAwaitingCompletion && c.Event.GetBoot() == nil && t.Session == "usp" {
			res := interimResult(t)
			p := awaitPlan{subState: store.SubStateAwaitingBoot, key: t.AwaitKey, timeout: q.o.RebootTimeout, interim: res}
			q.await(ctx, t, p)
			return false
		}
		o = q.firmwareOutcome(ctx, t, c, o)
	}
	if t.Operation == "diagnostic" {
		o = diagnosticOutcome(o)
	}
	return q.finishAwaited(ctx, t, o)
}
