package console

import (
	"net/http"
	"net/url"
	"slices"

	"github.com/duet-dm/duet/controller/api"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Held USP agents (DUET_USP_ADMISSION=hold): the endpoint IDs waiting
// for an operator's decision, approved or rejected here as through
// POST /api/v1/usp/admission/{eid}/approve|reject, with the role the API
// asks for.

var admissionStates = []string{store.AdmissionPending, store.AdmissionApproved, store.AdmissionRejected}

type agentsData struct {
	State  string
	States []string
	Agents []store.USPAdmission
	Next   string
	// CanDecide: the user's role may approve and reject (the API's rule).
	CanDecide bool
}

func (c *Console) heldAgents(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	q := r.URL.Query()
	d := agentsData{State: q.Get("state"), States: admissionStates, CanDecide: roleAtLeast(sess.User.Role, admissionRole)}
	if d.State == "" {
		d.State = store.AdmissionPending
	}
	if !slices.Contains(admissionStates, d.State) {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "state must be pending, approved or rejected")
	}
	const limit = 100
	as, err := c.st.ListUSPAdmission(r.Context(), d.State, limit+1, q.Get("after"))
	if err != nil {
		return err
	}
	if len(as) > limit {
		as = as[:limit]
		d.Next = as[limit-1].EndpointID
	}
	d.Agents = as
	c.render(w, r, sess, http.StatusOK, "agents", "Held USP agents", d)
	return nil
}

// admissionRole is the role the API asks to decide an admission.
var admissionRole = api.RouteRole("POST /api/v1/usp/admission/{eid}/approve")

func (c *Console) decideAgent(approve bool) func(http.ResponseWriter, *http.Request, *store.Session) error {
	return func(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
		eid := r.PathValue("eid")
		d, err := c.st.DecideUSPAgent(r.Context(), store.ActorFrom(r.Context()), eid, approve)
		if err != nil {
			return err
		}
		c.log.Info("usp agent admission decided", "device", eid, "state", d.State, "actor", store.ActorFrom(r.Context()))
		http.Redirect(w, r, "/agents?state="+url.QueryEscape(r.PostFormValue("from")), http.StatusSeeOther)
		return nil
	}
}
