package api

import (
	"net/http"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// DeviceTagsJSON is the body of the tag routes' answers.
type DeviceTagsJSON struct {
	DeviceID string   `json:"device_id"`
	Tags     []string `json:"tags"`
}

// addTag serves POST /api/v1/devices/{id}/tags/{tag}: idempotent; 200
// with the device's tags. The change (if any) is in the audit log.
func (a *Server) addTag(w http.ResponseWriter, r *http.Request) (int, error) {
	return a.changeTag(w, r, true)
}

// removeTag serves DELETE /api/v1/devices/{id}/tags/{tag}: idempotent;
// 200 with the device's remaining tags.
func (a *Server) removeTag(w http.ResponseWriter, r *http.Request) (int, error) {
	return a.changeTag(w, r, false)
}

func (a *Server) changeTag(w http.ResponseWriter, r *http.Request, add bool) (int, error) {
	id := r.PathValue("id")
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return 0, badParam("id", devicemodel.ErrorMessage(err))
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	var tags []string
	if add {
		tags, err = a.store.AddDeviceTag(r.Context(), who, id, r.PathValue("tag"))
	} else {
		tags, err = a.store.RemoveDeviceTag(r.Context(), who, id, r.PathValue("tag"))
	}
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, DeviceTagsJSON{DeviceID: id, Tags: tags}), nil
}
