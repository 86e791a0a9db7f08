package main

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"github.com/duet-dm/duet/pkg/store"
)

const tokenUsage = `usage:
  duet token create --name NAME [--role admin|operator|viewer]
  duet token list
  duet token revoke ID

Tokens authenticate the REST API (Authorization: Bearer <token>). A new
token's secret is printed once; only its SHA-256 is stored. Roles: viewer
may only read (GET); operator also runs tasks, task batches, tags, groups and
policies (rollouts included); admin also sets and deletes device credentials.
The database is DUET_DATABASE_URL (or --database-url).
`

// token manages API tokens directly in the database, so an operator who
// lost every token can still get in.
func (m *Main) token(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(m.Stderr, tokenUsage)
		if len(args) == 0 {
			return fmt.Errorf("token: missing subcommand (create, list, revoke)")
		}
		return flag.ErrHelp
	}
	sub := args[0]
	var name, role string
	s := newSettings()
	rest, err := s.parseOnly("token "+sub, args[1:], m.Getenv, m.Stderr, func(fs *flag.FlagSet) {
		if sub == "create" {
			fs.StringVar(&name, "name", "", "what the token is for (required)")
			fs.StringVar(&role, "role", "operator", "admin, operator or viewer")
		}
	}, dbCommandSettings)
	if err != nil {
		return err
	}
	switch sub {
	case "create", "list":
		if len(rest) > 0 {
			return fmt.Errorf("token %s: unexpected argument %q", sub, rest[0])
		}
	case "revoke":
		if len(rest) != 1 {
			return fmt.Errorf("token revoke: give exactly one token ID (see duet token list)")
		}
	default:
		fmt.Fprint(m.Stderr, tokenUsage)
		return fmt.Errorf("token: unknown subcommand %q", sub)
	}
	if sub == "create" {
		if name == "" {
			return fmt.Errorf("token create: --name is required")
		}
		if _, err := store.ParseRole(role); err != nil {
			return fmt.Errorf("token create: --role %q is not one of admin, operator, viewer", role)
		}
	}
	st, err := m.openMigrated(ctx, s)
	if err != nil {
		return err
	}
	defer st.Close()
	switch sub {
	case "create":
		t, secret, err := st.CreateToken(ctx, name, store.Role(role))
		if err != nil {
			return err
		}
		fmt.Fprintf(m.Stderr, "created token %s (%s, role %s); the secret below is shown only now\n", t.ID, t.Name, t.Role)
		fmt.Fprintln(m.Stdout, secret)
	case "list":
		ts, err := st.ListTokens(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tNAME\tROLE\tCREATED\tREVOKED")
		for _, t := range ts {
			rev := "-"
			if t.RevokedAt != nil {
				rev = t.RevokedAt.UTC().Format("2006-01-02T15:04:05Z")
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", t.ID, t.Name, t.Role, t.CreatedAt.UTC().Format("2006-01-02T15:04:05Z"), rev)
		}
		return w.Flush()
	case "revoke":
		if err := st.RevokeToken(ctx, rest[0]); err != nil {
			return err
		}
		fmt.Fprintf(m.Stdout, "revoked %s\n", rest[0])
	}
	return nil
}
