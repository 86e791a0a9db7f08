package policy

import (
	"encoding/json"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// ObjectSpec is one entry of an "objects" policy.
type ObjectSpec struct{}

// ManagementSpec is the spec of a "management" policy.
type ManagementSpec struct{}

func validateObjects(json.RawMessage) (*CheckedSpec, error) {
	return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "policy kind %q is being written", KindObjects)
}

func validateManagement(json.RawMessage) (*CheckedSpec, error) {
	return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "policy kind %q is being written", KindManagement)
}

func (s *CheckedSpec) objectsNeed() ParamNeed    { return ParamNeed{} }
func (s *CheckedSpec) managementNeed() ParamNeed { return ParamNeed{} }

func (s *CheckedSpec) objectWants(DeviceFacts, Env) ([]Want, error)     { return nil, nil }
func (s *CheckedSpec) managementWants(DeviceFacts, Env) ([]Want, error) { return nil, nil }
