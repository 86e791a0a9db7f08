package controller

import (
	"context"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// MaxParamConditions bounds the param conditions of one device search
// (GET /api/v1/devices, a task batch's filter): each is a join PostgreSQL
// plans; 100 took 12 s and 300 over two minutes (issue 15 §8).
const MaxParamConditions = 16

// DeviceState derives a device's state: the rebooting marker first (the
// reboot task is awaiting_boot), then the online flag. It is one of
// online, offline and rebooting.
func DeviceState(d devicemodel.Device) string {
	switch {
	case d.Rebooting:
		return "rebooting"
	case d.Online:
		return "online"
	}
	return "offline"
}

// TaggedDevice is a device with the operator's tags, sorted (never nil).
type TaggedDevice struct {
	devicemodel.Device
	Tags []string
}

// DevicePage is one page of a device search.
type DevicePage struct {
	Devices []TaggedDevice
	// Next is the cursor of the next page ("" on the last).
	Next string
	// Unknown, with param conditions on the first page, counts per
	// condition path the devices matching the other filters whose cache
	// holds no value for it: they match no condition on it for want of a
	// value (issue 12 item 6).
	Unknown map[string]int64
}

// Devices reads the device registry for the HTTP surfaces.
type Devices struct{ store *store.Store }

// NewDevices reads devices from st.
func NewDevices(st *store.Store) *Devices { return &Devices{store: st} }

// Search finds the devices f matches, with their tags; f.Count, when set,
// receives the number of matches. The first page of a search with param
// conditions also says how many devices could not be judged (Unknown).
func (d *Devices) Search(ctx context.Context, f store.DeviceFilter) (DevicePage, error) {
	out, err := d.Page(ctx, f)
	if err != nil {
		return DevicePage{}, err
	}
	if len(f.Params) > 0 && f.After == "" && f.AfterKey == "" {
		if out.Unknown, err = d.store.CountDevicesWithoutParams(ctx, f); err != nil {
			return DevicePage{}, err
		}
	}
	return out, nil
}

// Page is Search without the Unknown counts, for a page that shows them
// elsewhere: counting them reads every device matching the other filters.
func (d *Devices) Page(ctx context.Context, f store.DeviceFilter) (DevicePage, error) {
	if len(f.Params) > MaxParamConditions {
		return DevicePage{}, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "%d param conditions; at most %d", len(f.Params), MaxParamConditions)
	}
	devs, next, err := d.store.FindDevices(ctx, f)
	if err != nil {
		return DevicePage{}, err
	}
	out := DevicePage{Devices: make([]TaggedDevice, 0, len(devs)), Next: next}
	if out.Devices, err = d.withTags(ctx, devs); err != nil {
		return DevicePage{}, err
	}
	return out, nil
}

// Get returns one device with its tags.
func (d *Devices) Get(ctx context.Context, id string) (TaggedDevice, error) {
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return TaggedDevice{}, err
	}
	dev, err := d.store.FindDeviceByID(ctx, id)
	if err != nil {
		return TaggedDevice{}, err
	}
	out, err := d.withTags(ctx, []devicemodel.Device{dev})
	if err != nil {
		return TaggedDevice{}, err
	}
	return out[0], nil
}

func (d *Devices) withTags(ctx context.Context, devs []devicemodel.Device) ([]TaggedDevice, error) {
	ids := make([]string, len(devs))
	for i, dev := range devs {
		ids[i] = dev.ID
	}
	tags, err := d.store.FindTagsOfDevices(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := make([]TaggedDevice, len(devs))
	for i, dev := range devs {
		out[i] = TaggedDevice{Device: dev, Tags: tags[dev.ID]}
		if out[i].Tags == nil {
			out[i].Tags = []string{}
		}
	}
	return out, nil
}
