package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

const (
	// PolicyStream is the JetStream stream of policy events (rollout
	// progress), kept like device events so integrators can replay.
	PolicyStream = "DUET_POLICY"
	// PolicyPrefix: duet.policy.<policy>.<kind>.
	PolicyPrefix = "duet.policy"
	// ContentTypePolicyEvent is the Content-Type of policy events.
	ContentTypePolicyEvent = "application/x-protobuf; proto=duet.v1.PolicyEvent"
)

// PolicySubject is the subject of a policy's events of a kind
// ("rollout"). Policy IDs are encoded like device IDs.
func PolicySubject(policyID, kind string) string {
	return PolicyPrefix + "." + EncodeToken(policyID) + "." + kind
}

// PolicyStreamConfig is the configuration of the DUET_POLICY stream: the
// same retention as device events.
func (b *Bus) PolicyStreamConfig() jetstream.StreamConfig {
	cfg := b.EventStreamConfig()
	cfg.Name = PolicyStream
	cfg.Description = "Duet policy events: rollout progress (docs/bus.md)"
	cfg.Subjects = []string{PolicyPrefix + ".>"}
	return cfg
}

// PublishPolicyEvent stores a policy event and waits for the stream's
// acknowledgement. It fills in ID and time when empty.
func (b *Bus) PublishPolicyEvent(ctx context.Context, ev *duetv1.PolicyEvent) error {
	if ev.GetPolicyId() == "" {
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "policy event without policy id")
	}
	kind := ""
	switch ev.GetKind().(type) {
	case *duetv1.PolicyEvent_Rollout:
		kind = "rollout"
	default:
		return devicemodel.Errorf(devicemodel.CodeInvalidArgument, "policy event without kind")
	}
	if ev.Id == "" {
		ev.Id = NewID()
	}
	if ev.Time == nil {
		ev.Time = timestamppb.Now()
	}
	data, err := proto.Marshal(ev)
	if err != nil {
		return fmt.Errorf("bus: marshal policy event: %w", err)
	}
	m := &nats.Msg{
		Subject: PolicySubject(ev.PolicyId, kind),
		Data:    data,
		Header:  nats.Header{jetstream.MsgIDHeader: []string{ev.Id}, "Content-Type": []string{ContentTypePolicyEvent}},
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	if _, err := b.js.PublishMsg(ctx, m); err != nil {
		metricBusErrors.WithLabelValues("publish").Inc()
		return devicemodel.Errorf(devicemodel.CodeUnavailable, "publish %s: %v", m.Subject, err)
	}
	return nil
}
