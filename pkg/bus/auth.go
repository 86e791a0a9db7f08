package bus

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// Role is what a connection to Duet's embedded bus may do (issue 15 §4;
// docs/bus.md, "Who may do what"). Each role has its own NKey, generated
// on first start and kept in the data directory.
type Role string

// The roles of the embedded bus.
const (
	// RoleController owns the streams and the controller's consumer and
	// sends commands: everything.
	RoleController Role = "controller"
	// RoleCWMP publishes CWMP events, asks the controller for session work
	// and credentials, and answers CWMP commands.
	RoleCWMP Role = "cwmp"
	// RoleUSP publishes USP events, asks for routes and answers USP
	// commands.
	RoleUSP Role = "usp"
	// RoleIntegrator reads events (core subscriptions and JetStream
	// consumers of its own) and nothing else: no commands, no publishing,
	// no credentials.
	RoleIntegrator Role = "integrator"
)

// Roles lists every role.
var Roles = []Role{RoleController, RoleCWMP, RoleUSP, RoleIntegrator}

// InboxPrefix is where a role's connections receive replies. Each of
// Duet's own roles has one only it may subscribe to, so no other client
// reads its replies (a credential lookup's answer, a command's result).
// Integrators keep NATS's default, so the nats CLI works unchanged.
func (r Role) InboxPrefix() string {
	if r == RoleIntegrator {
		return "_INBOX"
	}
	return "_INBOX_DUET." + string(r)
}

// jsAPI is the JetStream API subject prefix.
const jsAPI = "$JS.API."

// Permissions are what role may publish and subscribe to. protected names
// JetStream consumers of the event stream an integrator may not create,
// change, read from or delete (the controller's durable consumer).
func Permissions(role Role, protected []string) (*server.Permissions, error) {
	// Replies to requests this connection received, and only those.
	responses := &server.ResponsePermission{MaxMsgs: 1}
	inbox := role.InboxPrefix() + ".>"
	switch role {
	case RoleController:
		return &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{">"}},
			Subscribe: &server.SubjectPermission{Allow: []string{">"}},
		}, nil
	case RoleCWMP, RoleUSP:
		p := string(role)
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: []string{
				EventPrefix + "." + p + ".>",
				"duet.ctl." + p + ".>",
				// An adapter started alone checks the streams exist.
				jsAPI + "INFO", jsAPI + "STREAM.INFO.*",
			}},
			Subscribe: &server.SubjectPermission{Allow: []string{"duet.cmd." + p + ".>", inbox}},
			Response:  responses,
		}, nil
	case RoleIntegrator:
		var allow, deny []string
		allow = append(allow, jsAPI+"INFO", jsAPI+"STREAM.NAMES", jsAPI+"STREAM.LIST")
		for _, stream := range []string{EventStream, PolicyStream, DeadLetterStream} {
			allow = append(allow,
				jsAPI+"STREAM.INFO."+stream,
				jsAPI+"STREAM.MSG.GET."+stream,
				jsAPI+"DIRECT.GET."+stream, jsAPI+"DIRECT.GET."+stream+".>",
				// Named consumers only (the consumer's name is in the
				// subject, so the deny list below can see it); the old
				// nameless form is not allowed.
				jsAPI+"CONSUMER.CREATE."+stream+".>",
				jsAPI+"CONSUMER.DURABLE.CREATE."+stream+".*",
				jsAPI+"CONSUMER.INFO."+stream+".*",
				jsAPI+"CONSUMER.DELETE."+stream+".*",
				jsAPI+"CONSUMER.MSG.NEXT."+stream+".*",
				jsAPI+"CONSUMER.NAMES."+stream, jsAPI+"CONSUMER.LIST."+stream,
				"$JS.ACK."+stream+".>", "$JS.FC."+stream+".>",
			)
			for _, c := range protected {
				if c == "" || strings.ContainsAny(c, ".*> ") {
					return nil, fmt.Errorf("bus: %q is not a consumer name", c)
				}
				deny = append(deny,
					jsAPI+"CONSUMER.CREATE."+stream+"."+c, jsAPI+"CONSUMER.CREATE."+stream+"."+c+".>",
					jsAPI+"CONSUMER.DURABLE.CREATE."+stream+"."+c,
					jsAPI+"CONSUMER.DELETE."+stream+"."+c,
					jsAPI+"CONSUMER.MSG.NEXT."+stream+"."+c,
					"$JS.ACK."+stream+"."+c+".>",
				)
			}
		}
		return &server.Permissions{
			Publish: &server.SubjectPermission{Allow: allow, Deny: deny},
			Subscribe: &server.SubjectPermission{Allow: []string{
				EventPrefix + ".>", PolicyPrefix + ".>", DeadLetterPrefix + ".>", inbox,
			}},
		}, nil
	}
	return nil, fmt.Errorf("bus: unknown role %q", role)
}

// Identities are the roles' NKeys of an embedded bus, one seed file per
// role in a directory (mode 0700, files 0600).
type Identities struct {
	Dir    string
	public map[Role]string
}

// SeedFile is the file holding role's NKey seed: give it to a process
// that connects with that role (DUET_NATS_CREDENTIALS, or `nats --nkey`).
func (id *Identities) SeedFile(r Role) string { return filepath.Join(id.Dir, string(r)+".nk") }

// PublicKey is role's public NKey.
func (id *Identities) PublicKey(r Role) string { return id.public[r] }

// EnsureIdentities reads the roles' NKeys from dir, creating the missing
// ones: a first start generates them, later starts keep them.
func EnsureIdentities(dir string) (*Identities, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, err
	}
	id := &Identities{Dir: dir, public: map[Role]string{}}
	for _, r := range Roles {
		path := id.SeedFile(r)
		seed, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			kp, err := nkeys.CreateUser()
			if err != nil {
				return nil, err
			}
			s, _ := kp.Seed()
			if err := writeNew(path, append(s, '\n')); err != nil && !errors.Is(err, os.ErrExist) {
				return nil, err
			}
			seed, err = os.ReadFile(path)
			if err != nil {
				return nil, err
			}
		} else if err != nil {
			return nil, err
		}
		if err := keepPrivate(path); err != nil {
			return nil, err
		}
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(seed))))
		if err != nil {
			return nil, fmt.Errorf("bus: %s is not an NKey seed: %v", path, err)
		}
		pub, err := kp.PublicKey()
		if err != nil {
			return nil, err
		}
		id.public[r] = pub
	}
	return id, nil
}
