package main

import (
	"crypto/tls"
	"net/url"
	"path/filepath"
	"strings"

	"github.com/duet-dm/duet/pkg/bus"
	"github.com/duet-dm/duet/pkg/tlsutil"
)

// tlsConfig is every TLS surface's configuration, loaded by checkServe so
// a bad certificate stops start-up, and kept reloaded by one Reloader
// (issue 15 §5; README, "Certificates").
type tlsConfig struct {
	reloader *tlsutil.Reloader
	// Servers: nil means plain text.
	http, cwmp, ws, natsServer *tls.Config
	natsInProcess              *tls.Config // trusts natsServer's own certificate
	// Clients of external servers: nil means plain text.
	natsClient, mqtt, stomp *tls.Config
}

// source loads a surface's files, or returns nil when none is set.
func (s *settings) tlsSource(r *tlsutil.Reloader, surface, certFlag, keyFlag, caFlag string) (*tlsutil.Source, error) {
	f := tlsutil.Files{Surface: surface}
	if certFlag != "" {
		f.Cert, f.Key = s.str(certFlag), s.str(keyFlag)
		if (f.Cert == "") != (f.Key == "") {
			return nil, s.errSetting(certFlag, "%s and %s must be set together", s.byFlag[certFlag].env, s.byFlag[keyFlag].env)
		}
	}
	if caFlag != "" {
		f.CA = s.str(caFlag)
	}
	if f.Cert == "" && f.CA == "" {
		return nil, nil
	}
	src, err := r.Add(f)
	if err != nil {
		flag := certFlag
		if f.Cert == "" {
			flag = caFlag
		}
		return nil, s.errSetting(flag, "%v", err)
	}
	return src, nil
}

func (s *settings) checkTLS(c *serveConfig) error {
	r := tlsutil.NewReloader(0, nil)
	t := &tlsConfig{reloader: r}
	c.tls = t
	src, err := s.tlsSource(r, "api", "http-tls-cert", "http-tls-key", "")
	if err != nil {
		return err
	}
	if src != nil {
		t.http = src.ServerConfig(tls.NoClientCert)
	}
	natsExternal := s.str("nats-url") != ""
	if natsExternal {
		src, err := s.tlsSource(r, "nats", "nats-tls-cert", "nats-tls-key", "nats-tls-ca")
		if err != nil {
			return err
		}
		if src != nil || strings.HasPrefix(s.str("nats-url"), "tls://") {
			t.natsClient = src.ClientConfig("")
		}
	} else {
		if s.str("nats-tls-ca") != "" {
			return s.errSetting("nats-tls-ca", "is for an external NATS (DUET_NATS_URL); the embedded server takes DUET_NATS_TLS_CERT and DUET_NATS_TLS_KEY")
		}
		src, err := s.tlsSource(r, "nats", "nats-tls-cert", "nats-tls-key", "")
		if err != nil {
			return err
		}
		if src != nil {
			t.natsServer, t.natsInProcess = src.ServerConfig(tls.NoClientCert), src.PinnedClientConfig()
		}
	}
	if c.comps["cwmp"] {
		src, err := s.tlsSource(r, "cwmp", "cwmp-tls-cert", "cwmp-tls-key", "cwmp-tls-client-ca")
		if err != nil {
			return err
		}
		if src != nil {
			if src.Certificate() == nil {
				return s.errSetting("cwmp-tls-client-ca", "needs HTTPS: set DUET_CWMP_TLS_CERT and DUET_CWMP_TLS_KEY")
			}
			auth := tls.NoClientCert
			if s.str("cwmp-tls-client-ca") != "" {
				auth = tls.RequireAndVerifyClientCert
			}
			t.cwmp = src.ServerConfig(auth)
		}
	}
	if c.comps["usp-ws"] {
		src, err := s.tlsSource(r, "usp-ws", "ws-tls-cert", "ws-tls-key", "")
		if err != nil {
			return err
		}
		if src != nil {
			t.ws = src.ServerConfig(tls.NoClientCert)
		}
	}
	if c.comps["usp-mqtt"] {
		src, err := s.tlsSource(r, "mqtt", "mqtt-tls-cert", "mqtt-tls-key", "mqtt-tls-ca")
		if err != nil {
			return err
		}
		if src != nil {
			u, err := url.Parse(s.str("mqtt-url"))
			if s.str("mqtt-url") == "" || err != nil || !tlsScheme(u.Scheme) {
				return s.errSetting("mqtt-url", "DUET_MQTT_TLS_* need an external broker URL with a TLS scheme (tls://, ssl://, mqtts:// or wss://)")
			}
			t.mqtt = src.ClientConfig("")
		}
	}
	if c.comps["usp-stomp"] {
		src, err := s.tlsSource(r, "stomp", "stomp-tls-cert", "stomp-tls-key", "stomp-tls-ca")
		if err != nil {
			return err
		}
		on, err := s.boolean("stomp-tls")
		if err != nil {
			return err
		}
		if src != nil || on {
			if s.str("stomp-addr") == "" {
				return s.errSetting("stomp-tls", "TLS is for an external STOMP broker: set DUET_STOMP_ADDR")
			}
			t.stomp = src.ClientConfig("")
		}
	}
	return nil
}

func tlsScheme(scheme string) bool {
	switch scheme {
	case "ssl", "tls", "mqtts", "mqtt+ssl", "tcps", "wss":
		return true
	}
	return false
}

// sealKey is the bus seal key: the setting, or the data directory's.
func (s *settings) sealKey(busDir string) (*bus.SealKey, error) {
	if v := s.str("bus-seal-key"); v != "" {
		k, err := bus.ParseSealKey(v)
		if err != nil {
			return nil, s.errSetting("bus-seal-key", "%v", err) // never the value
		}
		return k, nil
	}
	k, err := bus.LoadOrCreateSealKey(filepath.Join(busDir, "seal.key"))
	if err != nil {
		return nil, s.errSetting("data-dir", "bus seal key: %v", err)
	}
	return k, nil
}
