package controller

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// EnrolActor is who automatic credential enrolment acts as, in the task
// list and the audit log.
const EnrolActor = "system:cwmp-enrolment"

// enrolmentTaskKey is the unique key of an enrolment's Set task: it tells
// the task apart at dispatch (its passwords are filled in then) and when
// it finishes.
const enrolmentTaskKey = "cwmp-enrolment"

// How a session authenticated (duetv1.SessionWorkRequest.auth).
const (
	AuthWithShared  = "shared"
	AuthWithDevice  = "device"
	AuthWithPending = "pending"
)

var metricEnrolments = promauto.NewCounterVec(prometheus.CounterOpts{
	Name: "duet_cwmp_enrolments_total",
	Help: "CWMP credential enrolments by outcome: started, set_accepted, enrolled, failed (issue 15 §6).",
}, []string{"outcome"})

// EnrolmentOptions configure NewEnrolments.
type EnrolmentOptions struct {
	Store *store.Store
	Tasks *TaskQueue
	// Key seals the pending passwords; required.
	Key *store.CredentialKey
	// Realm the ACS challenges with (the HA1 is made for it).
	Realm string
	// Username is the ManagementServer.Username the CPEs use in the shared
	// mode (DUET_CWMP_USERNAME); enrolment keeps it and changes the
	// passwords only.
	Username string
	// Rules decide when a CPE that keeps its old credentials is given up.
	Rules  store.EnrolmentRules
	Logger *slog.Logger
}

// Enrolments gives each CPE on the shared credentials its own
// (docs/guide-cwmp.md, "Enrolment"): on its bootstrap or first session it
// generates random passwords, keeps them as HA1 and sealed, and queues a
// SetParameterValues of ManagementServer.Password,
// ConnectionRequestUsername and ConnectionRequestPassword. The CWMP
// adapter accepts both the old and the new credentials until the CPE uses
// the new ones; then they are the device's, and the shared ones are
// refused for it. A Set fault, or a CPE that keeps using its old
// credentials after accepting the Set, gives the enrolment up.
type Enrolments struct {
	o   EnrolmentOptions
	log *slog.Logger
}

// NewEnrolments builds the service.
func NewEnrolments(o EnrolmentOptions) (*Enrolments, error) {
	if o.Store == nil || o.Tasks == nil || o.Key == nil {
		return nil, fmt.Errorf("enrolment needs the store, the task queue and the credentials key (DUET_CREDENTIALS_KEY)")
	}
	if o.Username == "" {
		return nil, fmt.Errorf("enrolment needs the CPEs' username (DUET_CWMP_USERNAME)")
	}
	if o.Realm == "" {
		o.Realm = "Duet"
	}
	if o.Rules.MaxOldSessions < 1 {
		o.Rules.MaxOldSessions = 3
	}
	if o.Rules.Window <= 0 {
		o.Rules.Window = 24 * time.Hour
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	e := &Enrolments{o: o, log: o.Logger.With("component", "cwmp-enrolment")}
	o.Tasks.OnDispatch(e.prepare)
	return e, nil
}

// Credential states of a CWMP device (GET …/credentials/enrolment).
const (
	CredentialsShared   = "shared"
	CredentialsPending  = store.EnrolmentPending
	CredentialsEnrolled = store.EnrolmentEnrolled
	CredentialsFailed   = store.EnrolmentFailed
	// CredentialsConfigured: set through the API (PUT …/credentials), not
	// enrolled; used to authenticate in the per-device mode only.
	CredentialsConfigured = "configured"
)

// EnrolmentStatus says which credentials a device is on: shared (none of
// its own), pending (an enrolment in progress), enrolled (its own, by
// enrolment), configured (set through the API), failed (the last
// enrolment was rolled back; Reason says why).
type EnrolmentStatus struct {
	State       string
	Reason      string
	TaskID      string
	SetAt       *time.Time
	OldSessions int
	Attempts    int
	UpdatedAt   *time.Time
}

// FindEnrolmentStatus reads a device's credential status; CodeNotFound
// for an unknown device.
func FindEnrolmentStatus(ctx context.Context, st *store.Store, deviceID string) (EnrolmentStatus, error) {
	en, err := st.FindEnrolment(ctx, deviceID)
	if err == nil {
		return EnrolmentStatus{State: en.State, Reason: en.Reason, TaskID: en.TaskID, SetAt: en.SetAt,
			OldSessions: en.OldSessions, Attempts: en.Attempts, UpdatedAt: &en.UpdatedAt}, nil
	}
	if devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		return EnrolmentStatus{}, err
	}
	c, err := st.FindDeviceCredentials(ctx, deviceID)
	if err == nil {
		return EnrolmentStatus{State: CredentialsConfigured, UpdatedAt: &c.UpdatedAt}, nil
	}
	if devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		return EnrolmentStatus{}, err
	}
	if _, err := st.FindDeviceByID(ctx, deviceID); err != nil {
		return EnrolmentStatus{}, err
	}
	return EnrolmentStatus{State: CredentialsShared}, nil
}

// Session is told how a CWMP session authenticated (its round 0): it
// completes, counts against or starts the device's enrolment. Errors are
// logged; the session goes on whatever happens here.
func (e *Enrolments) Session(ctx context.Context, req *duetv1.SessionWorkRequest) {
	id := req.GetDeviceId()
	switch req.GetAuth() {
	case AuthWithPending:
		en, changed, err := e.o.Store.EnrolmentSession(ctx, EnrolActor, id, true, e.o.Rules)
		if err != nil {
			e.log.Error("recording an enrolment failed", "device", id, "err", err)
			return
		}
		if changed && en.State == store.EnrolmentEnrolled {
			metricEnrolments.WithLabelValues("enrolled").Inc()
			e.log.Info("CPE enrolled: it authenticated with its own credentials; the shared ones are refused for it now", "device", id)
		}
	case AuthWithShared:
		en, err := e.o.Store.FindEnrolment(ctx, id)
		switch {
		case devicemodel.ErrorCode(err) == devicemodel.CodeNotFound:
			e.begin(ctx, EnrolActor, id, false)
		case err != nil:
			e.log.Error("reading an enrolment failed", "device", id, "err", err)
		case en.State == store.EnrolmentPending:
			after, changed, err := e.o.Store.EnrolmentSession(ctx, EnrolActor, id, false, e.o.Rules)
			if err != nil {
				e.log.Error("recording an enrolment failed", "device", id, "err", err)
				return
			}
			if changed && after.State == store.EnrolmentFailed {
				metricEnrolments.WithLabelValues("failed").Inc()
				e.log.Warn("CPE enrolment rolled back: it stays on the shared credentials", "device", id, "reason", after.Reason)
			}
		case en.State == store.EnrolmentFailed && req.GetBootstrap():
			// A bootstrap (factory reset, new ACS URL) is a new start.
			e.begin(ctx, EnrolActor, id, false)
		}
	}
}

// Retry starts a device's enrolment again for an operator (actor): the
// device must be on the shared credentials (never enrolled, failed, or
// pending with its Set not accepted). The Set goes out with a connection
// request.
func (e *Enrolments) Retry(ctx context.Context, actor, deviceID string) (store.Enrolment, error) {
	if _, err := e.o.Store.FindDeviceByID(ctx, deviceID); err != nil {
		return store.Enrolment{}, err
	}
	return e.start(ctx, actor, deviceID, true)
}

func (e *Enrolments) begin(ctx context.Context, actor, deviceID string, wake bool) {
	if _, err := e.start(ctx, actor, deviceID, wake); err != nil && devicemodel.ErrorCode(err) != devicemodel.CodeConflict {
		e.log.Error("starting an enrolment failed", "device", deviceID, "err", err)
	}
}

// deviceWait bounds how long the first session of a new device waits for
// the registry to record it: its Inform event is applied asynchronously.
const deviceWait = 5 * time.Second

func (e *Enrolments) start(ctx context.Context, actor, deviceID string, wake bool) (store.Enrolment, error) {
	d, err := e.o.Store.FindDeviceByID(ctx, deviceID)
	for end := time.Now().Add(deviceWait); devicemodel.ErrorCode(err) == devicemodel.CodeNotFound && time.Now().Before(end); {
		select {
		case <-ctx.Done():
			return store.Enrolment{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		d, err = e.o.Store.FindDeviceByID(ctx, deviceID)
	}
	if err != nil {
		return store.Enrolment{}, err
	}
	in := store.CredentialsInput{Username: e.o.Username, Password: randomSecret(),
		ConnectionRequestUsername: "duet-" + randomHex(6), ConnectionRequestPassword: randomSecret()}
	// An operator's try (wake) replaces one whose Set never got through.
	en, err := e.o.Store.BeginEnrolment(ctx, actor, e.o.Key, e.o.Realm, deviceID, in, wake)
	if err != nil {
		return en, err
	}
	ms := cmp.Or(d.DataModel, "Device.") + "ManagementServer."
	// The passwords are not in the task: they are filled in at dispatch
	// (prepare), so the task list, its audit entry and its stored command
	// never hold them.
	t, err := e.o.Tasks.Create(store.ContextWithActor(ctx, actor), deviceID, TaskRequest{
		Operation: "set", UniqueKey: enrolmentTaskKey, ConnectionRequest: &wake,
		Params: []ParamJSON{
			{Path: ms + "Password", Value: "", Type: "string"},
			{Path: ms + "ConnectionRequestUsername", Value: in.ConnectionRequestUsername, Type: "string"},
			{Path: ms + "ConnectionRequestPassword", Value: "", Type: "string"},
		},
	})
	if err == nil {
		err = e.o.Store.EnrolmentTask(ctx, deviceID, t.ID)
	}
	if err != nil {
		// Nothing will carry the Set: give the pending credentials up.
		_, _, _ = e.o.Store.EnrolmentSetAnswered(ctx, actor, deviceID, t.ID, false, "queueing the Set failed: "+devicemodel.ErrorMessage(err))
		return en, err
	}
	en.TaskID = t.ID
	metricEnrolments.WithLabelValues("started").Inc()
	e.log.Info("CPE enrolment started", "device", deviceID, "task", t.ID, "actor", actor)
	return en, nil
}

// prepare fills an enrolment task's passwords in at dispatch, from the
// sealed pending ones. Other tasks are left alone.
func (e *Enrolments) prepare(ctx context.Context, t store.Task, cmd *duetv1.Command) error {
	if t.UniqueKey != enrolmentTaskKey || cmd.GetSet() == nil {
		return nil
	}
	_, pass, crPass, found, err := e.o.Store.EnrolmentSecrets(ctx, e.o.Key, t.DeviceID)
	if err != nil {
		return err
	}
	if !found {
		return devicemodel.Errorf(devicemodel.CodeConflict, "the enrolment of device %q is no longer pending", t.DeviceID)
	}
	for _, p := range cmd.GetSet().GetParams() {
		switch {
		case strings.HasSuffix(p.Path, "ManagementServer.Password"):
			p.Value, p.Secret = pass, true // sealed on the bus
		case strings.HasSuffix(p.Path, "ManagementServer.ConnectionRequestPassword"):
			p.Value, p.Secret = crPass, true
		}
	}
	return nil
}

// TaskFinished records the CPE's answer to an enrolment's Set.
func (e *Enrolments) TaskFinished(ctx context.Context, t store.Task) {
	if t.UniqueKey != enrolmentTaskKey {
		return
	}
	accepted := t.State == store.TaskSucceeded
	reason := ""
	if !accepted {
		reason = fmt.Sprintf("the Set of the new credentials failed: %s", cmp.Or(t.ErrorMessage, t.ErrorCode, string(t.State)))
		if t.DeviceFault != 0 {
			reason += fmt.Sprintf(" (CPE fault %d)", t.DeviceFault)
		}
	}
	en, changed, err := e.o.Store.EnrolmentSetAnswered(ctx, EnrolActor, t.DeviceID, t.ID, accepted, reason)
	switch {
	case err != nil:
		e.log.Error("recording an enrolment's Set failed", "device", t.DeviceID, "task", t.ID, "err", err)
	case changed && accepted:
		metricEnrolments.WithLabelValues("set_accepted").Inc()
		e.log.Info("CPE accepted its new credentials; they apply from its next session", "device", t.DeviceID)
	case changed:
		metricEnrolments.WithLabelValues("failed").Inc()
		e.log.Warn("CPE enrolment failed: it stays on the shared credentials", "device", t.DeviceID, "reason", en.Reason)
	}
}

// randomSecret is a password of 128 random bits, in 22 characters of the
// URL-safe base64 alphabet (ManagementServer.Password is string(256)).
func randomSecret() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}
