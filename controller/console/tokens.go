package console

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// API tokens, for admins (issue 13 item 3): the same tokens as `duet
// token`, made and revoked here with the admin's name in the audit log.

type tokensData struct {
	Tokens []store.Token
	Error  string
	Made   string
	Secret string
}

func (c *Console) tokens(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	return c.showTokens(w, r, sess, http.StatusOK, tokensData{})
}

func (c *Console) showTokens(w http.ResponseWriter, r *http.Request, sess *store.Session, code int, d tokensData) error {
	ts, err := c.st.ListTokens(r.Context())
	if err != nil {
		return err
	}
	d.Tokens = ts
	c.render(w, r, sess, code, "tokens", "API tokens", d)
	return nil
}

func (c *Console) createToken(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	name, role := strings.TrimSpace(r.PostFormValue("name")), store.Role(r.PostFormValue("role"))
	t, secret, err := c.st.CreateTokenAs(r.Context(), store.ActorFrom(r.Context()), name, role)
	if err != nil {
		if statusOf(err) >= 500 {
			return err
		}
		return c.showTokens(w, r, sess, statusOf(err), tokensData{Error: devicemodel.ErrorMessage(err)})
	}
	// The secret is shown to this admin once, as `duet token create` does.
	return c.showTokens(w, r, sess, http.StatusOK, tokensData{Made: fmt.Sprintf("Token %s (%s, role %s) was created. Its secret, shown only now:", t.ID, t.Name, t.Role), Secret: secret})
}

func (c *Console) revokeToken(w http.ResponseWriter, r *http.Request, _ *store.Session) error {
	if err := c.st.RevokeTokenAs(r.Context(), store.ActorFrom(r.Context()), r.PathValue("id")); err != nil {
		return err
	}
	http.Redirect(w, r, "/tokens", http.StatusSeeOther)
	return nil
}
