package controller

import (
	"context"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// Roles, each allowed what the one below it is (README "Roles"):
//   - viewer reads everything;
//   - operator also runs tasks and task batches, tags devices, and
//     manages groups and policies, rollouts included;
//   - admin also sets and deletes device credentials, reveals secret
//     values (and manages tokens, on the command line, and later users).
//
// Every HTTP surface (the REST API, the console) asks these functions, so
// a role means the same wherever it is used.
var roleRank = map[store.Role]int{store.RoleViewer: 1, store.RoleOperator: 2, store.RoleAdmin: 3}

// KnownRole reports whether role is one of viewer, operator and admin.
func KnownRole(role store.Role) bool {
	_, ok := roleRank[role]
	return ok
}

// RoleAtLeast reports whether role has the rights of need (viewer <
// operator < admin). An unknown role has none.
func RoleAtLeast(role, need store.Role) bool {
	have, ok := roleRank[role]
	return ok && have >= roleRank[need]
}

// CanReveal says whether a role may ask to see cached secret values
// (audited). Every other role, operators included, sees "***" (issue 15
// §9).
func CanReveal(role store.Role) bool { return role == store.RoleAdmin }

// CanCauseDeviceTraffic says whether a role may make Duet talk to a
// device (a task, a refresh): a read-only role must not (issue 15 §10).
func CanCauseDeviceTraffic(role store.Role) bool { return RoleAtLeast(role, store.RoleOperator) }

// TokenFinder resolves a bearer token (store.Store does).
type TokenFinder interface {
	// FindTokenBySecret returns CodeUnauthenticated for an unknown or
	// revoked token.
	FindTokenBySecret(ctx context.Context, secret string) (store.Token, error)
}

var _ TokenFinder = (*store.Store)(nil)

// Authenticate resolves a token secret to a live token with a known role:
// CodeUnauthenticated for an unknown or revoked one, CodeDenied for a
// role Duet does not know; any other error is the lookup's own.
func Authenticate(ctx context.Context, tokens TokenFinder, secret string) (store.Token, error) {
	t, err := tokens.FindTokenBySecret(ctx, secret)
	if err != nil {
		return store.Token{}, err
	}
	if !KnownRole(t.Role) {
		return store.Token{}, devicemodel.Errorf(devicemodel.CodeDenied, "unknown role %q", t.Role)
	}
	return t, nil
}

// TokenActor names a token's owner in the audit log and on the tasks it
// creates: "name (id)".
func TokenActor(t store.Token) string { return t.Name + " (" + t.ID + ")" }
