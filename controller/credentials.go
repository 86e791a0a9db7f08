package controller

import (
	"context"
	"log/slog"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
)

// CredentialsOptions configure NewCredentials.
type CredentialsOptions struct {
	// Store is required.
	Store *store.Store
	// Key seals connection-request passwords; without it every method
	// answers ErrNoCredentialsKey.
	Key *store.CredentialKey
	// Realm is the Digest realm the ACS challenges with; stored HA1s are
	// computed for it. Default "Duet".
	Realm  string
	Logger *slog.Logger
}

// ErrNoCredentialsKey says what the operator has to do.
var ErrNoCredentialsKey = devicemodel.Errorf(devicemodel.CodeUnavailable,
	"device credentials are unavailable: set DUET_CREDENTIALS_KEY (base64 of 32 random bytes, e.g. openssl rand -base64 32) and restart")

// Credentials keeps a device's CWMP credentials: the CPE's towards the
// ACS and those Duet presents to its connection-request URL. Secrets are
// stored as a Digest HA1 or sealed, and never returned.
type Credentials struct {
	o   CredentialsOptions
	log *slog.Logger
}

// NewCredentials serves device credentials.
func NewCredentials(o CredentialsOptions) *Credentials {
	if o.Realm == "" {
		o.Realm = "Duet"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Credentials{o: o, log: o.Logger}
}

// Available is ErrNoCredentialsKey when no key is configured, else nil.
func (c *Credentials) Available() error {
	if c.o.Key == nil {
		return ErrNoCredentialsKey
	}
	return nil
}

// Put stores a device's credentials, audited under actor. The device need
// not have connected yet: with per-device auth it cannot register before
// its credentials exist.
func (c *Credentials) Put(ctx context.Context, actor, deviceID string, in store.CredentialsInput) (store.DeviceCredentials, error) {
	if err := c.Available(); err != nil {
		return store.DeviceCredentials{}, err
	}
	out, err := c.o.Store.PutDeviceCredentials(ctx, actor, c.o.Key, c.o.Realm, deviceID, in)
	if err != nil {
		return store.DeviceCredentials{}, err
	}
	c.log.Info("device credentials set", "device", deviceID, "actor", actor)
	return out, nil
}

// Find returns what is stored of a device's credentials.
func (c *Credentials) Find(ctx context.Context, deviceID string) (store.DeviceCredentials, error) {
	if err := c.Available(); err != nil {
		return store.DeviceCredentials{}, err
	}
	return c.o.Store.FindDeviceCredentials(ctx, deviceID)
}

// Delete removes a device's credentials, audited under actor.
func (c *Credentials) Delete(ctx context.Context, actor, deviceID string) error {
	if err := c.Available(); err != nil {
		return err
	}
	if err := c.o.Store.DeleteDeviceCredentials(ctx, actor, deviceID); err != nil {
		return err
	}
	c.log.Info("device credentials deleted", "device", deviceID, "actor", actor)
	return nil
}
