package policy

import (
	"encoding/json"
	"strings"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// KindFirmware is a firmware campaign (issue 14 §4): "members of this
// group run version V (file F)". A member whose SoftwareVersion is V is
// compliant without a transfer; any other gets one firmware_upgrade task,
// rolled out with the policy's rollout strategy. A device whose upgrade
// failed stays failed (not retried) until the operator resumes the
// rollout or changes the policy.
//
//	{"file_id": "9f2c…", "version": "2.0.1"}
const KindFirmware = "firmware"

// FirmwareSpec is the spec of a firmware policy.
type FirmwareSpec struct {
	FileID  string `json:"file_id"`
	Version string `json:"version"`
}

// FirmwareWant is a device's wanted software version and the file that
// brings it; Current is what the registry says it runs.
type FirmwareWant struct {
	FileID  string `json:"file_id"`
	Version string `json:"version"`
	Current string `json:"current"`
}

func validateFirmware(spec json.RawMessage) (*CheckedSpec, error) {
	var fs FirmwareSpec
	if err := decodeStrict(spec, &fs); err != nil {
		return nil, err
	}
	if strings.TrimSpace(fs.FileID) == "" || len(fs.FileID) > 64 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec.file_id: give the id of a firmware file (GET /api/v1/files)")
	}
	if strings.TrimSpace(fs.Version) == "" || len(fs.Version) > 256 {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "spec.version: give the version the file installs (the SoftwareVersion devices then report)")
	}
	return &CheckedSpec{Kind: KindFirmware, Firmware: &fs}, nil
}

// firmwareNeed: the USP image to download into is chosen from the cached
// FirmwareImage table (controller/firmware.go).
func (s *CheckedSpec) firmwareNeed() ParamNeed {
	if s.Firmware == nil {
		return ParamNeed{}
	}
	return ParamNeed{Paths: []string{"Device.DeviceInfo.ActiveFirmwareImage"}, Prefixes: []string{"Device.DeviceInfo.FirmwareImage."}}
}

func (s *CheckedSpec) firmwareWants(d DeviceFacts) []Want {
	return []Want{{Firmware: &FirmwareWant{FileID: s.Firmware.FileID, Version: s.Firmware.Version, Current: d.Device.SoftwareVersion}}}
}
