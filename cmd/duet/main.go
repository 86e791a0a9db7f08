// Command duet is the Duet device management server: a TR-069 ACS and a
// TR-369 USP controller behind one API.
//
//	duet serve        run the server (every component, or --only some)
//	duet migrate      apply database migrations and exit
//	duet token        create, list or revoke API tokens
//	duet user         manage the web console's users
//	duet config       print a reference settings file, or check settings
//	duet healthcheck  exit 0 when a running duet answers /readyz
//	duet version      print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/duet-dm/duet/pkg/store"
)

// Version is set at build time with -ldflags "-X main.Version=...".
var Version = "dev"

// ShutdownBudget is how long `duet serve` takes at most to drain and exit
// after SIGINT/SIGTERM.
const ShutdownBudget = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	m := &Main{Stdout: os.Stdout, Stderr: os.Stderr, Stdin: os.Stdin, Getenv: os.Getenv}
	go func() {
		// A hard stop in case draining hangs: exit within the budget
		// whatever happens.
		<-ctx.Done()
		time.Sleep(ShutdownBudget + time.Second)
		fmt.Fprintln(os.Stderr, "duet: shutdown took too long, exiting")
		os.Exit(2)
	}()
	os.Exit(m.Run(ctx, os.Args[1:]))
}

// Main is the program, with its outside world injectable so tests can run
// it in-process.
type Main struct {
	Stdout, Stderr io.Writer
	// Stdin is read by `duet user … --password-stdin`.
	Stdin  io.Reader
	Getenv func(string) string
	// Ready, when set, is called once `serve` is up, with its listeners.
	Ready func(Listeners)
}

// Run executes a subcommand and returns the process exit code.
func (m *Main) Run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		m.usage()
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = m.serve(ctx, args[1:])
	case "migrate":
		err = m.migrate(ctx, args[1:])
	case "token":
		err = m.token(ctx, args[1:])
	case "user":
		err = m.user(ctx, args[1:])
	case "config":
		err = m.config(ctx, args[1:])
	case "healthcheck":
		err = m.healthcheck(ctx, args[1:])
	case "version", "--version":
		fmt.Fprintf(m.Stdout, "duet %s\n", version())
	case "help", "-h", "--help":
		if len(args) > 1 && args[1] != "help" {
			// duet help <command> is duet <command> -h: that command's flags only.
			return m.Run(ctx, []string{args[1], "-h"})
		}
		m.usage()
	default:
		fmt.Fprintf(m.Stderr, "duet: unknown command %q\n\n", args[0])
		m.usage()
		return 2
	}
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(m.Stderr, "duet: %v\n", err)
		return 1
	}
	return 0
}

func (m *Main) usage() {
	fmt.Fprint(m.Stderr, `usage: duet <command> [flags]

commands:
  serve        run the server
  migrate      apply database migrations and exit
  token        create, list or revoke API tokens
  user         create, list, disable, enable console users or set a password
  config       print a reference settings file (config example) or check
               settings without starting (config check)
  healthcheck  exit 0 when the local duet answers /readyz (for containers)
  version      print the version (also duet --version)

"duet help <command>" or "duet <command> -h" shows that command's flags.
Every setting is a flag, a DUET_* environment variable and a key of the
--config YAML file (duet config example).
`)
}

func version() string {
	if Version != "dev" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return Version
}

func (m *Main) migrate(ctx context.Context, args []string) error {
	s := newSettings()
	if _, err := s.parseOnly("migrate", args, m.Getenv, m.Stderr, nil, dbCommandSettings); err != nil {
		return err
	}
	log, err := m.logger(s)
	if err != nil {
		return err
	}
	st, err := store.Open(ctx, store.Options{URL: s.str("database-url"), MaxConns: 2, Logger: log})
	if err != nil {
		return s.errSetting("database-url", "%v", err)
	}
	defer st.Close()
	n, err := st.Migrate(ctx)
	if err != nil {
		return err
	}
	v, _ := st.SchemaVersion(ctx)
	fmt.Fprintf(m.Stdout, "applied %d migration(s); schema version %d\n", n, v)
	return nil
}

// openMigrated opens a small pool for a command-line tool (token, user) and
// brings the schema up to date; the caller closes it.
func (m *Main) openMigrated(ctx context.Context, s *settings) (*store.Store, error) {
	log, err := m.logger(s)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, store.Options{URL: s.str("database-url"), MaxConns: 2, Logger: log})
	if err != nil {
		return nil, s.errSetting("database-url", "%v", err)
	}
	if _, err := st.Migrate(ctx); err != nil {
		st.Close()
		return nil, err
	}
	return st, nil
}

func (m *Main) logger(s *settings) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(s.str("log-level"))); err != nil {
		return nil, s.errSetting("log-level", "%q is not one of debug, info, warn, error", s.str("log-level"))
	}
	format, err := s.oneOf("log-format", "auto", "text", "json")
	if err != nil {
		return nil, err
	}
	if format == "auto" {
		format = "json"
		if f, ok := m.Stderr.(*os.File); ok {
			if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	if format == "text" {
		return slog.New(slog.NewTextHandler(m.Stderr, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(m.Stderr, opts)), nil
}
