package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"text/tabwriter"
	"time"
)

const configUsage = `usage:
  duet config example           print a commented settings file with every setting
  duet config check [flags]     check the settings as "duet serve" would, start
                                nothing, and print each value and where it came from

Settings come from, lowest first: the default, the --config YAML file (or
DUET_CONFIG), DUET_* variables, flags. Secrets are never printed.
`

func (m *Main) config(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(m.Stderr, configUsage)
		if len(args) == 0 {
			return fmt.Errorf("config: missing subcommand (example, check)")
		}
		return flag.ErrHelp
	}
	switch args[0] {
	case "example":
		if len(args) > 1 {
			return fmt.Errorf("config example: unexpected argument %q", args[1])
		}
		_, err := io.WriteString(m.Stdout, newSettings().example())
		return err
	case "check":
		s := newSettings()
		if err := s.parse("config check", args[1:], m.Getenv, m.Stderr); err != nil {
			return err
		}
		if _, err := m.logger(s); err != nil {
			return err
		}
		if _, err := s.checkServe(); err != nil {
			return err
		}
		w := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "SETTING\tVALUE\tFROM")
		for _, st := range s.list {
			v := fmt.Sprintf("%q", st.shown())
			if st.secret && st.value != "" {
				v = st.shown()
			}
			fmt.Fprintf(w, "%s\t%s\t%s\n", st.flag, v, st.source)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(m.Stdout, "settings are valid")
		return nil
	default:
		fmt.Fprint(m.Stderr, configUsage)
		return fmt.Errorf("config: unknown subcommand %q", args[0])
	}
}

// healthcheck asks a running duet's /readyz, for container HEALTHCHECKs on
// images without a shell or curl (the image is distroless).
func (m *Main) healthcheck(ctx context.Context, args []string) error {
	s := newSettings()
	var url string
	var timeout time.Duration
	if _, err := s.parseOnly("healthcheck", args, m.Getenv, m.Stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&url, "url", "", "URL to GET (default http://127.0.0.1:<port of --http-addr>/readyz)")
		fs.DurationVar(&timeout, "timeout", 3*time.Second, "how long to wait for the answer")
	}, []string{"http-addr", "http-tls-cert", "http-tls-key"}); err != nil {
		return err
	}
	client := http.DefaultClient
	if cert := s.str("http-tls-cert"); cert != "" {
		// The API serves HTTPS: the probe trusts exactly the certificate
		// in the file the server reads (pinned), whatever signed it.
		pinned, err := pinnedClient(cert)
		if err != nil {
			return s.errSetting("http-tls-cert", "%v", err)
		}
		client = pinned
	}
	if url == "" {
		addr, err := s.addr("http-addr")
		if err != nil {
			return err
		}
		host, port, _ := net.SplitHostPort(addr)
		if host == "" || host == "0.0.0.0" || host == "::" {
			host = "127.0.0.1"
		}
		scheme := "http://"
		if s.str("http-tls-cert") != "" {
			scheme = "https://"
		}
		url = scheme + net.JoinHostPort(host, port) + "/readyz"
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %v", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %d: %s", url, resp.StatusCode, body)
	}
	_, _ = m.Stdout.Write(body)
	return nil
}

// pinnedClient accepts only the server certificate in certFile (its first
// PEM block): a local probe of our own server, which may be named for a
// public host and not for 127.0.0.1.
func pinnedClient(certFile string) (*http.Client, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM certificate", certFile)
	}
	want := block.Bytes
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the pin below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], want) {
				return errors.New("the server's certificate is not the one in DUET_HTTP_TLS_CERT")
			}
			return nil
		},
	}}}, nil
}
