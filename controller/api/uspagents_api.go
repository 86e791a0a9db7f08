package api

import (
	"net/http"
	"strconv"
	"time"

	"github.com/duet-dm/duet/controller"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// USP agent identities and admission (issue 15 §2; docs/guide-usp.md,
// securing USP). Every route that hands out, removes or decides an
// identity is admin only.
var uspAgentAdminRoutes = []string{
	"PUT /api/v1/usp/agents/{eid}/secret",
	"DELETE /api/v1/usp/agents/{eid}/secret",
	"GET /api/v1/usp/agents/{eid}/secret",
	"POST /api/v1/usp/agents/secrets",
	"POST /api/v1/usp/enrolment-keys",
	"GET /api/v1/usp/enrolment-keys",
	"DELETE /api/v1/usp/enrolment-keys/{id}",
	"POST /api/v1/usp/admission/{eid}/approve",
	"POST /api/v1/usp/admission/{eid}/reject",
}

func init() {
	for _, p := range uspAgentAdminRoutes {
		adminRoutes[p] = true
	}
}

func (a *Server) registerUSPAgentRoutes() {
	a.route("PUT /api/v1/usp/agents/{eid}/secret", a.putAgentSecret)
	a.route("GET /api/v1/usp/agents/{eid}/secret", a.getAgentSecret)
	a.route("DELETE /api/v1/usp/agents/{eid}/secret", a.deleteAgentSecret)
	a.route("POST /api/v1/usp/agents/secrets", a.putAgentSecrets)
	a.route("POST /api/v1/usp/enrolment-keys", a.createEnrolmentKey)
	a.route("GET /api/v1/usp/enrolment-keys", a.listEnrolmentKeys)
	a.route("DELETE /api/v1/usp/enrolment-keys/{id}", a.deleteEnrolmentKey)
	a.route("GET /api/v1/usp/admission", a.listAdmission)
	a.route("POST /api/v1/usp/admission/{eid}/approve", a.decideAdmission(true))
	a.route("POST /api/v1/usp/admission/{eid}/reject", a.decideAdmission(false))
}

// AgentSecretRequest is the body of PUT …/secret: the secret to set, or
// none to have one generated (recommended).
type AgentSecretRequest struct {
	Secret string `json:"secret,omitempty"`
}

// AgentSecretJSON answers a secret change: the secret appears once, here.
type AgentSecretJSON struct {
	EndpointID string    `json:"endpoint_id"`
	Secret     string    `json:"secret,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	CreatedBy  string    `json:"created_by"`
}

// maxAgentSecretsBatch bounds POST /api/v1/usp/agents/secrets.
const maxAgentSecretsBatch = 1000

// maxAgentSecretsBody fits maxAgentSecretsBatch entries of a long endpoint
// ID and secret.
const maxAgentSecretsBody = 1 << 20

func agentEID(r *http.Request) (string, error) {
	eid := r.PathValue("eid")
	if err := devicemodel.ValidateDeviceID(eid); err != nil {
		return "", badParam("eid", devicemodel.ErrorMessage(err))
	}
	return eid, nil
}

func (a *Server) putAgentSecret(w http.ResponseWriter, r *http.Request) (int, error) {
	eid, err := agentEID(r)
	if err != nil {
		return 0, err
	}
	var req AgentSecretRequest
	if r.ContentLength != 0 { // no body: a generated secret
		if err := decodeBody(w, r, 8<<10, &req); err != nil {
			return 0, err
		}
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	s, secret, err := a.store.SetUSPAgentSecret(r.Context(), who, eid, req.Secret)
	if err != nil {
		return 0, err
	}
	a.log.Info("usp agent secret set", "device", eid, "actor", who)
	out := AgentSecretJSON{EndpointID: eid, CreatedAt: s.CreatedAt.UTC(), CreatedBy: who}
	if req.Secret == "" {
		out.Secret = secret
	}
	return writeJSON(w, http.StatusOK, out), nil
}

func (a *Server) getAgentSecret(w http.ResponseWriter, r *http.Request) (int, error) {
	eid, err := agentEID(r)
	if err != nil {
		return 0, err
	}
	s, err := a.store.FindUSPAgentSecret(r.Context(), eid)
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, AgentSecretJSON{EndpointID: eid, CreatedAt: s.CreatedAt.UTC(), CreatedBy: s.CreatedBy}), nil
}

func (a *Server) deleteAgentSecret(w http.ResponseWriter, r *http.Request) (int, error) {
	eid, err := agentEID(r)
	if err != nil {
		return 0, err
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	if err := a.store.DeleteUSPAgentSecret(r.Context(), who, eid); err != nil {
		return 0, err
	}
	a.log.Info("usp agent secret deleted", "device", eid, "actor", who)
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent, nil
}

// AgentSecretsRequest provisions many agents at once (an ISP's bulk
// enrolment): each gets the given secret or a generated one.
type AgentSecretsRequest struct {
	Agents []struct {
		EndpointID string `json:"endpoint_id"`
		Secret     string `json:"secret,omitempty"`
	} `json:"agents"`
}

func (a *Server) putAgentSecrets(w http.ResponseWriter, r *http.Request) (int, error) {
	var req AgentSecretsRequest
	if err := decodeBody(w, r, maxAgentSecretsBody, &req); err != nil {
		return 0, err
	}
	if len(req.Agents) == 0 || len(req.Agents) > maxAgentSecretsBatch {
		return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "agents: 1 to %d entries", maxAgentSecretsBatch)
	}
	for i, ag := range req.Agents {
		if err := devicemodel.ValidateDeviceID(ag.EndpointID); err != nil {
			return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "agents[%d].endpoint_id: %s", i, devicemodel.ErrorMessage(err))
		}
		if ag.Secret != "" && len(ag.Secret) < store.MinAgentSecretLen {
			return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "agents[%d].secret: at least %d characters", i, store.MinAgentSecretLen)
		}
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	out := make([]AgentSecretJSON, 0, len(req.Agents))
	for _, ag := range req.Agents {
		s, secret, err := a.store.SetUSPAgentSecret(r.Context(), who, ag.EndpointID, ag.Secret)
		if err != nil {
			return 0, err
		}
		j := AgentSecretJSON{EndpointID: ag.EndpointID, CreatedAt: s.CreatedAt.UTC(), CreatedBy: who}
		if ag.Secret == "" {
			j.Secret = secret
		}
		out = append(out, j)
	}
	a.log.Info("usp agent secrets set", "agents", len(out), "actor", who)
	return writeJSON(w, http.StatusOK, map[string]any{"agents": out}), nil
}

// EnrolmentKeyRequest creates an enrolment key for a pattern.
type EnrolmentKeyRequest struct {
	Pattern string `json:"pattern"`
}

// EnrolmentKeyJSON shows an enrolment key; Key appears once, at creation.
type EnrolmentKeyJSON struct {
	store.USPEnrolmentKey
	Key string `json:"key,omitempty"`
}

func (a *Server) createEnrolmentKey(w http.ResponseWriter, r *http.Request) (int, error) {
	if a.o.CredentialKey == nil {
		writeError(w, http.StatusServiceUnavailable, controller.ErrNoCredentialsKey)
		return http.StatusServiceUnavailable, nil
	}
	var req EnrolmentKeyRequest
	if err := decodeBody(w, r, 8<<10, &req); err != nil {
		return 0, err
	}
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	k, key, err := a.store.CreateUSPEnrolmentKey(r.Context(), who, a.o.CredentialKey, req.Pattern)
	if err != nil {
		return 0, err
	}
	a.log.Info("usp enrolment key created", "pattern", k.Pattern, "id", k.ID, "actor", who)
	k.CreatedAt = k.CreatedAt.UTC()
	return writeJSON(w, http.StatusCreated, EnrolmentKeyJSON{USPEnrolmentKey: k, Key: key}), nil
}

func (a *Server) listEnrolmentKeys(w http.ResponseWriter, r *http.Request) (int, error) {
	ks, err := a.store.ListUSPEnrolmentKeys(r.Context())
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"enrolment_keys": ks}), nil
}

func (a *Server) deleteEnrolmentKey(w http.ResponseWriter, r *http.Request) (int, error) {
	who, err := actor(r)
	if err != nil {
		return 0, err
	}
	if err := a.store.DeleteUSPEnrolmentKey(r.Context(), who, r.PathValue("id")); err != nil {
		return 0, err
	}
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent, nil
}

// listAdmission lists the endpoint IDs held for approval (state=pending,
// the default), approved, rejected, or all (state=all), by endpoint ID;
// after= pages.
func (a *Server) listAdmission(w http.ResponseWriter, r *http.Request) (int, error) {
	q := r.URL.Query()
	state := q.Get("state")
	switch state {
	case "":
		state = store.AdmissionPending
	case "all":
		state = ""
	case store.AdmissionPending, store.AdmissionApproved, store.AdmissionRejected:
	default:
		return 0, badParam("state", "pending, approved, rejected or all")
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			return 0, badParam("limit", "an integer from 1 to 1000")
		}
		limit = n
	}
	l, err := a.store.ListUSPAdmission(r.Context(), state, limit, q.Get("after"))
	if err != nil {
		return 0, err
	}
	return writeJSON(w, http.StatusOK, map[string]any{"agents": l}), nil
}

func (a *Server) decideAdmission(approve bool) func(http.ResponseWriter, *http.Request) (int, error) {
	return func(w http.ResponseWriter, r *http.Request) (int, error) {
		eid, err := agentEID(r)
		if err != nil {
			return 0, err
		}
		who, err := actor(r)
		if err != nil {
			return 0, err
		}
		d, err := a.store.DecideUSPAgent(r.Context(), who, eid, approve)
		if err != nil {
			return 0, err
		}
		a.log.Info("usp agent admission decided", "device", eid, "state", d.State, "actor", who)
		return writeJSON(w, http.StatusOK, d), nil
	}
}
