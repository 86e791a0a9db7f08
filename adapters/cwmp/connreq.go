package cwmp

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/netguard"
	duetv1 "github.com/duet-dm/duet/proto/duet/v1"
	"google.golang.org/protobuf/proto"
)

// connectionRequester sends HTTP connection requests (TR-069 §3.2.2).
type connectionRequester struct {
	timeout time.Duration
	tr      *http.Transport // keep-alive: the authenticated GET reuses the 401's connection
	fresh   *http.Transport // no keep-alive: the retry after a drop gets a new connection
}

func newConnectionRequester(timeout time.Duration, targets *netguard.Targets) *connectionRequester {
	if targets == nil {
		targets = &netguard.Targets{}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	// The CPE chose the URL: check where it really leads, after DNS, at
	// each dial (a rebinding name cannot slip past an earlier check).
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second, Control: targets.Control}
	tr.DialContext = d.DialContext
	tr.MaxIdleConnsPerHost = 1
	tr.IdleConnTimeout = 5 * time.Second
	fresh := tr.Clone()
	fresh.DisableKeepAlives = true
	return &connectionRequester{timeout: timeout, tr: tr, fresh: fresh}
}

func (c *connectionRequester) close() {
	c.tr.CloseIdleConnections()
	c.fresh.CloseIdleConnections()
}

func (c *connectionRequester) get(ctx context.Context, tr *http.Transport, u, authz string) (*http.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if authz != "" {
		req.Header.Set("Authorization", authz)
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	// Bodies are irrelevant; read a little so the connection can be reused.
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	return resp, nil
}

// send wakes the CPE: an unauthenticated GET, and on 401 the same GET with
// Digest (or Basic when allowed and offered). If the CPE drops the
// connection after the 401 the authenticated GET is retried once on a
// fresh connection (TR-069 §3.2.2, docs/cwmp-interop.md #27). It returns the final HTTP
// status; 200 and 204 mean accepted.
func (c *connectionRequester) send(ctx context.Context, cr *duetv1.ConnectionRequest) (int, error) {
	u, err := url.Parse(cr.GetUrl())
	if err != nil || u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return 0, devicemodel.Errorf(devicemodel.CodeInvalidArgument, "connection request URL %q is not an http URL", cr.GetUrl())
	}
	resp, err := c.get(ctx, c.tr, u.String(), "")
	var refused *netguard.RefusedError
	if errors.As(err, &refused) {
		return 0, devicemodel.Errorf(devicemodel.CodeDenied, "connection request to %s refused: %v (DUET_CWMP_CONNREQ_ALLOW)", u.Host, refused)
	}
	if err != nil {
		return 0, devicemodel.Errorf(devicemodel.CodeUnavailable, "connection request: %v", err)
	}
	if resp.StatusCode != http.StatusUnauthorized {
		return resp.StatusCode, nil
	}
	authz := ""
	for _, ch := range resp.Header.Values("WWW-Authenticate") {
		if len(ch) > 7 && strings.EqualFold(ch[:7], "Digest ") {
			authz = digestAuthorization(ch[7:], cr.GetUsername(), cr.GetPassword(), u.RequestURI())
			break
		}
	}
	if authz == "" && cr.GetAllowBasic() {
		for _, ch := range resp.Header.Values("WWW-Authenticate") {
			if len(ch) >= 5 && strings.EqualFold(ch[:5], "Basic") {
				req := &http.Request{Header: http.Header{}}
				req.SetBasicAuth(cr.GetUsername(), cr.GetPassword())
				authz = req.Header.Get("Authorization")
			}
		}
	}
	if authz == "" {
		return http.StatusUnauthorized, devicemodel.Errorf(devicemodel.CodeUnauthenticated, "connection request: CPE offered no usable authentication scheme")
	}
	resp, err = c.get(ctx, c.tr, u.String(), authz)
	if err != nil {
		if ctx.Err() != nil {
			return 0, devicemodel.Errorf(devicemodel.CodeTimeout, "connection request: %v", err)
		}
		// Some CPEs close the socket after the 401; retry once on a new
		// connection (GenieACS workaround).
		resp, err = c.get(ctx, c.fresh, u.String(), authz)
		if err != nil {
			return 0, devicemodel.Errorf(devicemodel.CodeUnavailable, "connection request: %v", err)
		}
	}
	return resp.StatusCode, nil
}

// digestAuthorization answers an RFC 2617 challenge with qop=auth when
// offered (nc=00000001 and a random cnonce, as GenieACS does).
func digestAuthorization(challenge, user, pass, uri string) string {
	p := parseAuthParams(challenge)
	realm, nonce := p["realm"], p["nonce"]
	ha1 := md5hex(user + ":" + realm + ":" + pass)
	ha2 := md5hex(http.MethodGet + ":" + uri)
	var b [8]byte
	_, _ = rand.Read(b[:])
	cnonce := hex.EncodeToString(b[:])
	q := func(s string) string { return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"` }
	h := "Digest username=" + q(user) + ", realm=" + q(realm) + ", nonce=" + q(nonce) + ", uri=" + q(uri)
	qops := strings.Split(p["qop"], ",")
	hasAuth := false
	for _, x := range qops {
		if strings.TrimSpace(x) == "auth" {
			hasAuth = true
		}
	}
	if hasAuth {
		resp := md5hex(ha1 + ":" + nonce + ":00000001:" + cnonce + ":auth:" + ha2)
		h += ", qop=auth, nc=00000001, cnonce=" + q(cnonce) + ", response=" + q(resp)
	} else {
		h += ", response=" + q(md5hex(ha1+":"+nonce+":"+ha2))
	}
	if op, ok := p["opaque"]; ok {
		h += ", opaque=" + q(op)
	}
	if alg, ok := p["algorithm"]; ok {
		h += ", algorithm=" + alg
	}
	return h
}

// withSharedCredentials returns cr with the shared connection-request
// credentials when it carries none of the device's own.
func (a *ACS) withSharedCredentials(cr *duetv1.ConnectionRequest) *duetv1.ConnectionRequest {
	if cr.GetUsername() != "" || a.o.ConnReqUsername == "" {
		return cr
	}
	c := proto.Clone(cr).(*duetv1.ConnectionRequest)
	c.Username, c.Password = a.o.ConnReqUsername, a.o.ConnReqPassword
	return c
}

// handleCommand serves duet.cmd.cwmp.* requests. Only connection_request
// can be executed outside a session: every other operation reaches a CPE
// through SessionWork when it next connects.
func (a *ACS) handleCommand(ctx context.Context, cmd *duetv1.Command) *duetv1.CommandResult {
	cr := cmd.GetConnectionRequest()
	if cr == nil {
		return bus.ResultError(cmd, devicemodel.Errorf(devicemodel.CodeUnsupported,
			"CWMP commands other than connection_request are delivered in session (SessionWork)"))
	}
	status, err := a.connReq.send(ctx, a.withSharedCredentials(cr))
	if status == http.StatusUnauthorized && cr.GetFallback() {
		// During an enrolment: the CPE does not use the new password (yet).
		metricConnReqFallbacks.Inc()
		status, err = a.connReq.send(ctx, a.withSharedCredentials(&duetv1.ConnectionRequest{Url: cr.GetUrl(),
			AllowBasic: cr.GetAllowBasic(), Username: cr.GetFallbackUsername(), Password: cr.GetFallbackPassword()}))
	}
	accepted := err == nil && (status == http.StatusOK || status == http.StatusNoContent)
	if err == nil && !accepted {
		switch status {
		case http.StatusUnauthorized:
			err = devicemodel.Errorf(devicemodel.CodeUnauthenticated, "connection request refused: wrong credentials (401)")
		case http.StatusServiceUnavailable:
			err = devicemodel.Errorf(devicemodel.CodeUnavailable, "connection request: CPE busy or rate limited (503)")
		default:
			err = devicemodel.Errorf(devicemodel.CodeUnavailable, "connection request: CPE answered %d", status)
		}
	}
	outcome := "accepted"
	if !accepted {
		outcome = strings.ToLower(devicemodel.ErrorCode(err).String())
		var de *devicemodel.Error
		if !errors.As(err, &de) {
			outcome = "error"
		}
	}
	metricConnReqs.WithLabelValues(outcome).Inc()
	res := &duetv1.CommandResult{CommandId: cmd.GetId(), DeviceId: cmd.GetDeviceId(), Error: bus.ErrorToProto(err),
		Result: &duetv1.CommandResult_ConnectionRequest{ConnectionRequest: &duetv1.ConnectionRequestResult{HttpStatus: uint32(status)}}}
	ev := &duetv1.Event{
		Device:       &duetv1.DeviceIdentity{Id: cmd.GetDeviceId(), Protocol: duetv1.Protocol_PROTOCOL_CWMP},
		Reachability: &duetv1.Reachability{Transport: "cwmp", ConnectionRequestUrl: cr.GetUrl(), AdapterId: a.o.AdapterID},
		Source:       a.o.AdapterID,
		Kind: &duetv1.Event_ConnectionRequest{ConnectionRequest: &duetv1.ConnectionRequestOutcome{
			Accepted: accepted, HttpStatus: uint32(status), Error: bus.ErrorToProto(err),
		}},
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.o.SessionTimeout)
	defer cancel()
	if perr := a.o.Bus.PublishEvent(pctx, ev); perr != nil {
		a.log.Warn("publishing connection_request event failed", "device", cmd.GetDeviceId(), "err", perr)
	}
	return res
}
