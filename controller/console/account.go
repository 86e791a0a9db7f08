package console

import (
	"net/http"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Own password change, for any logged-in user: the old password is
// checked as a login is (store.Login, rate-limited, so a stolen session
// cannot guess it), and the change ends every session of the user, this
// one included (store.UpdateUser): they log in again with the new one.

type passwordData struct {
	Error string
}

func (c *Console) passwordPage(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	c.render(w, r, sess, http.StatusOK, "password", "Change your password", passwordData{})
	return nil
}

func (c *Console) changePassword(w http.ResponseWriter, r *http.Request, sess *store.Session) error {
	old, pw, again := r.PostFormValue("old"), r.PostFormValue("new"), r.PostFormValue("again")
	refuse := func(code int, msg string) error {
		c.render(w, r, sess, code, "password", "Change your password", passwordData{Error: msg})
		return nil
	}
	if pw != again {
		return refuse(http.StatusBadRequest, "The new password and its repetition differ.")
	}
	if _, err := c.st.Login(r.Context(), sess.User.Name, old, clientAddress(r), c.o.LoginLimit); err != nil {
		switch devicemodel.ErrorCode(err) {
		case devicemodel.CodeUnauthenticated:
			return refuse(http.StatusForbidden, "The current password is wrong.")
		case devicemodel.CodeResourcesExceeded:
			return refuse(http.StatusTooManyRequests, "Too many wrong passwords. Wait a few minutes, then try again.")
		}
		return err
	}
	if _, err := c.st.UpdateUser(r.Context(), store.ActorFrom(r.Context()), sess.User.Name, store.UserChange{Password: &pw}); err != nil {
		if statusOf(err) < 500 {
			return refuse(statusOf(err), devicemodel.ErrorMessage(err))
		}
		return err
	}
	c.log.Info("console password changed", "user", sess.User.Name, "address", clientAddress(r))
	c.setSessionCookie(w, r, "", -1)
	http.Redirect(w, r, "/login?changed=1", http.StatusSeeOther)
	return nil
}
