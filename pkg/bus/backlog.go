package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/duet-dm/duet/pkg/devicemodel"
)

// AskBacklog asks the controllers how many device events wait in the event
// stream for them (docs/bus.md, "Backlog"). Adapters shed new sessions
// while it is above their bound, so a registry that cannot keep up slows
// the devices down instead of falling further behind.
func (b *Bus) AskBacklog(ctx context.Context, p devicemodel.Protocol) (uint64, error) {
	res := &wrapperspb.UInt64Value{}
	if err := b.request(ctx, BacklogSubject(p), &emptypb.Empty{}, res); err != nil {
		return 0, err
	}
	return res.GetValue(), nil
}

// ServeBacklog answers AskBacklog for every protocol.
func (b *Bus) ServeBacklog(queue string, h func(context.Context) uint64) (*Subscription, error) {
	return b.serve(BacklogWildcard, queue, func(ctx context.Context, m *nats.Msg) (proto.Message, error) {
		if err := proto.Unmarshal(m.Data, &emptypb.Empty{}); err != nil {
			return nil, fmt.Errorf("undecodable backlog request: %w", err)
		}
		return wrapperspb.UInt64(h(ctx)), nil
	})
}
