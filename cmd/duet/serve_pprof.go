package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// startPprof serves Go's profiles (CPU, heap, allocations, goroutines) on
// their own loopback listener (DUET_PPROF_ADDR), never on the API's: a
// profile shows memory contents and costs CPU, so only someone on the
// machine may ask for one. docs/operations.md says how to take one.
func startPprof(addr string, log *slog.Logger, started *stack) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// No write timeout: a CPU profile answers after its ?seconds=.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("pprof server stopped", "err", err)
		}
	}()
	started.push(func(ctx context.Context) { _ = srv.Shutdown(ctx) })
	log.Warn("serving Go profiles (DUET_PPROF_ADDR); turn it off when done measuring", "addr", l.Addr().String())
	return nil
}
