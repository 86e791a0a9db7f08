package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"github.com/duet-dm/duet/pkg/devicemodel"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
)

// AskRoutes asks the controller for one page of the USP agents last online
// over req.Transport (docs/bus.md). No controller answering gives
// CodeUnavailable.
func (b *Bus) AskRoutes(ctx context.Context, req *duetv1.RoutesRequest) (*duetv1.Routes, error) {
	if req.GetTransport() == "" {
		return nil, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "routes request without a transport")
	}
	res := &duetv1.Routes{}
	if err := b.request(ctx, RoutesSubject(req.GetTransport()), req, res); err != nil {
		return nil, err
	}
	return res, nil
}

// RoutesHandler answers a routes request.
type RoutesHandler func(ctx context.Context, req *duetv1.RoutesRequest) (*duetv1.Routes, error)

// ServeRoutes answers AskRoutes requests for every transport. The subject's
// transport wins over the payload's.
func (b *Bus) ServeRoutes(queue string, h RoutesHandler) (*Subscription, error) {
	return b.serve(RoutesWildcard, queue, func(ctx context.Context, m *nats.Msg) (proto.Message, error) {
		req := &duetv1.RoutesRequest{}
		if err := proto.Unmarshal(m.Data, req); err != nil {
			return nil, fmt.Errorf("undecodable routes request: %w", err)
		}
		tr, err := DeviceFromSubject(m.Subject)
		if err != nil {
			return nil, err
		}
		req.Transport = tr
		return h(ctx, req)
	})
}
