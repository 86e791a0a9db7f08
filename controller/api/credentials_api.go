package api

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// CredentialsRequest is the body of PUT /api/v1/devices/{id}/credentials:
// the CPE's credentials towards the ACS (checked by the CWMP adapter's
// per-device auth mode) and those Duet presents to the CPE's
// connection-request URL.
type CredentialsRequest struct {
	Username                  string `json:"username"`
	Password                  string `json:"password"`
	ConnectionRequestUsername string `json:"connection_request_username"`
	ConnectionRequestPassword string `json:"connection_request_password"`
}

// CredentialsJSON is what the API shows of a device's credentials: never a
// secret, only whether one is stored.
type CredentialsJSON struct {
	Username                     string    `json:"username"`
	ConnectionRequestUsername    string    `json:"connection_request_username"`
	HasPassword                  bool      `json:"has_password"`
	HasConnectionRequestPassword bool      `json:"has_connection_request_password"`
	UpdatedAt                    time.Time `json:"updated_at"`
}

func credentialsJSON(c store.DeviceCredentials) CredentialsJSON {
	return CredentialsJSON{
		Username: c.Username, ConnectionRequestUsername: c.ConnectionRequestUsername,
		HasPassword: c.DigestHA1 != "", HasConnectionRequestPassword: c.HasConnectionRequestPass,
		UpdatedAt: c.UpdatedAt.UTC(),
	}
}

// maxCredentialsBody bounds a PUT body: four fields of at most 256 bytes,
// JSON-escaped, fit with room to spare.
const maxCredentialsBody = 8 << 10

// credentialsReady checks the device ID and that a key is configured. The
// missing key's 503 is written here: route() would hide a 5xx message as
// "internal error", and this one is the operator's instruction.
func (a *Server) credentialsReady(w http.ResponseWriter, r *http.Request) (string, int, error) {
	id := r.PathValue("id")
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return "", 0, badParam("id", devicemodel.ErrorMessage(err))
	}
	if err := a.creds.Available(); err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return "", http.StatusServiceUnavailable, nil
	}
	return id, 0, nil
}

// putCredentials stores a device's credentials. The device need not have
// connected yet: with per-device auth it cannot register before its
// credentials exist.
func (a *Server) putCredentials(w http.ResponseWriter, r *http.Request) (int, error) {
	id, code, err := a.credentialsReady(w, r)
	if err != nil || code != 0 {
		return code, err
	}
	var req CredentialsRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxCredentialsBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return 0, errBodyTooLarge(maxCredentialsBody)
		}
		// The decoder's message names a field or an offset, never a value.
		return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "request body: %v", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "request body: data after the JSON object")
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	c, err := a.creds.Put(r.Context(), who, id, store.CredentialsInput{
		Username: req.Username, Password: req.Password,
		ConnectionRequestUsername: req.ConnectionRequestUsername, ConnectionRequestPassword: req.ConnectionRequestPassword,
	})
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, credentialsJSON(c)), nil
}

func (a *Server) getCredentials(w http.ResponseWriter, r *http.Request) (int, error) {
	id, code, err := a.credentialsReady(w, r)
	if err != nil || code != 0 {
		return code, err
	}
	c, err := a.creds.Find(r.Context(), id)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, credentialsJSON(c)), nil
}

func (a *Server) deleteCredentials(w http.ResponseWriter, r *http.Request) (int, error) {
	id, code, err := a.credentialsReady(w, r)
	if err != nil || code != 0 {
		return code, err
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	if err := a.creds.Delete(r.Context(), who, id); err != nil {
		return 0, err
	}
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent, nil
}

// EnrolmentJSON is a device's credential status (docs/guide-cwmp.md,
// "Enrolment"): state shared, pending, enrolled or failed (reason says
// why), never a secret.
type EnrolmentJSON struct {
	DeviceID      string     `json:"device_id"`
	State         string     `json:"state"`
	Reason        string     `json:"reason,omitempty"`
	TaskID        string     `json:"task_id,omitempty"`
	SetAcceptedAt *time.Time `json:"set_accepted_at,omitempty"`
	OldSessions   int        `json:"old_sessions"`
	Attempts      int        `json:"attempts"`
	UpdatedAt     *time.Time `json:"updated_at,omitempty"`
	// Enabled says whether automatic enrolment runs (DUET_CWMP_ENROL).
	Enabled bool `json:"enabled"`
}

func (a *Server) enrolmentJSON(id string, s controller.EnrolmentStatus) EnrolmentJSON {
	utc := func(t *time.Time) *time.Time {
		if t == nil {
			return nil
		}
		u := t.UTC()
		return &u
	}
	return EnrolmentJSON{DeviceID: id, State: s.State, Reason: s.Reason, TaskID: s.TaskID, SetAcceptedAt: utc(s.SetAt),
		OldSessions: s.OldSessions, Attempts: s.Attempts, UpdatedAt: utc(s.UpdatedAt), Enabled: a.o.Enrolments != nil}
}

func (a *Server) getEnrolment(w http.ResponseWriter, r *http.Request) (int, error) {
	id := r.PathValue("id")
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return 0, badParam("id", devicemodel.ErrorMessage(err))
	}
	s, err := controller.FindEnrolmentStatus(r.Context(), a.store, id)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, a.enrolmentJSON(id, s)), nil
}

// retryEnrolment starts a device's enrolment again (after a failure, or
// for a device never enrolled); its Set goes out with a connection request.
func (a *Server) retryEnrolment(w http.ResponseWriter, r *http.Request) (int, error) {
	id := r.PathValue("id")
	if err := devicemodel.ValidateDeviceID(id); err != nil {
		return 0, badParam("id", devicemodel.ErrorMessage(err))
	}
	if a.o.Enrolments == nil {
		writeError(w, http.StatusServiceUnavailable, devicemodel.Errorf(devicemodel.CodeUnavailable,
			"credential enrolment is off: it needs DUET_CWMP_AUTH=shared and DUET_CREDENTIALS_KEY (DUET_CWMP_ENROL)"))
		return http.StatusServiceUnavailable, nil
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	if _, err := a.o.Enrolments.Retry(r.Context(), who, id); err != nil {
		return 0, err
	}
	s, err := controller.FindEnrolmentStatus(r.Context(), a.store, id)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusAccepted, a.enrolmentJSON(id, s)), nil
}
