package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/duet-dm/duet/pkg/store"
)

const userUsage = `usage:
  duet user create --name NAME [--role admin|operator|viewer] [--password-stdin]
  duet user list
  duet user disable NAME
  duet user enable NAME
  duet user passwd [--password-stdin] NAME

Users log in to the web console (http://HOST:PORT/ on DUET_HTTP_ADDR). Without
--password-stdin, create and passwd generate a password and print it once;
with it, the first line of standard input is the password (at least 12
characters). Only an argon2id hash is stored. Disabling a user or changing
its password ends its sessions. Roles are the API tokens': viewer reads,
operator also changes devices, groups and policies, admin also manages
credentials, tokens and users. The database is DUET_DATABASE_URL (or
--database-url). Changes are in the audit log as made by "duet user
(command line)".
`

// cliActor is who the audit log says made a change with `duet user`.
const cliActor = "duet user (command line)"

// user manages console users directly in the database, so an operator
// locked out of the console can still get in.
func (m *Main) user(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(m.Stderr, userUsage)
		if len(args) == 0 {
			return fmt.Errorf("user: missing subcommand (create, list, disable, enable, passwd)")
		}
		return flag.ErrHelp
	}
	sub := args[0]
	var name, role string
	var fromStdin bool
	s := newSettings()
	rest, err := s.parseOnly("user "+sub, args[1:], m.Getenv, m.Stderr, func(fs *flag.FlagSet) {
		switch sub {
		case "create":
			fs.StringVar(&name, "name", "", "the user's login name (required)")
			fs.StringVar(&role, "role", "operator", "admin, operator or viewer")
			fallthrough
		case "passwd":
			fs.BoolVar(&fromStdin, "password-stdin", false, "read the password from the first line of standard input instead of generating one")
		}
	}, dbCommandSettings)
	if err != nil {
		return err
	}
	switch sub {
	case "create", "list":
		if len(rest) > 0 {
			return fmt.Errorf("user %s: unexpected argument %q", sub, rest[0])
		}
	case "disable", "enable", "passwd":
		if len(rest) != 1 {
			return fmt.Errorf("user %s: give exactly one user name (see duet user list)", sub)
		}
		name = rest[0]
	default:
		fmt.Fprint(m.Stderr, userUsage)
		return fmt.Errorf("user: unknown subcommand %q", sub)
	}
	if sub == "create" {
		if name == "" {
			return fmt.Errorf("user create: --name is required")
		}
		if err := store.CheckUserName(name); err != nil {
			return fmt.Errorf("user create: --name: %v", err)
		}
		if _, err := store.ParseRole(role); err != nil {
			return fmt.Errorf("user create: --role %q is not one of admin, operator, viewer", role)
		}
	}
	password, generated := "", false
	if sub == "create" || sub == "passwd" {
		if fromStdin {
			if password, err = readPasswordLine(m.Stdin); err != nil {
				return fmt.Errorf("user %s: %v", sub, err)
			}
			if err := store.CheckPassword(password); err != nil {
				return fmt.Errorf("user %s: %v", sub, err)
			}
		} else {
			password, generated = store.NewPassword(), true
		}
	}
	st, err := m.openMigrated(ctx, s)
	if err != nil {
		return err
	}
	defer st.Close()
	switch sub {
	case "create":
		u, err := st.CreateUser(ctx, cliActor, name, store.Role(role), password)
		if err != nil {
			return err
		}
		fmt.Fprintf(m.Stderr, "created user %s (role %s)\n", u.Name, u.Role)
	case "list":
		us, err := st.ListUsers(ctx)
		if err != nil {
			return err
		}
		w := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "NAME\tROLE\tCREATED\tLAST LOGIN\tDISABLED")
		for _, u := range us {
			last, dis := "-", "-"
			if u.LastLoginAt != nil {
				last = u.LastLoginAt.UTC().Format("2006-01-02T15:04:05Z")
			}
			if u.DisabledAt != nil {
				dis = u.DisabledAt.UTC().Format("2006-01-02T15:04:05Z")
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", u.Name, u.Role, u.CreatedAt.UTC().Format("2006-01-02T15:04:05Z"), last, dis)
		}
		return w.Flush()
	case "disable", "enable":
		off := sub == "disable"
		if _, err := st.UpdateUser(ctx, cliActor, name, store.UserChange{Disabled: &off}); err != nil {
			return err
		}
		fmt.Fprintf(m.Stdout, "%sd %s\n", sub, name)
	case "passwd":
		if _, err := st.UpdateUser(ctx, cliActor, name, store.UserChange{Password: &password}); err != nil {
			return err
		}
		fmt.Fprintf(m.Stderr, "changed the password of %s; its sessions ended\n", name)
	}
	if generated {
		fmt.Fprintln(m.Stderr, "the password below is shown only now:")
		fmt.Fprintln(m.Stdout, password)
	}
	return nil
}

// readPasswordLine reads the first line of r, without its line ending.
func readPasswordLine(r io.Reader) (string, error) {
	if r == nil {
		return "", fmt.Errorf("--password-stdin: no standard input")
	}
	line, err := bufio.NewReader(io.LimitReader(r, 4096)).ReadString('\n')
	if err != nil && err != io.EOF {
		return "", fmt.Errorf("--password-stdin: %v", err)
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return "", fmt.Errorf("--password-stdin: standard input has no password")
	}
	return line, nil
}
