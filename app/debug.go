package app

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"golang.org/x/sync/errgroup"
)

// checkDebugListen accepts only a loopback address for --debug-listen:
// profiles and goroutine dumps show what the process holds, and the
// endpoint has no authentication.
func checkDebugListen(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return optionErrorf("--debug-listen %q: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return optionErrorf("--debug-listen %q: want a loopback address (127.0.0.1:PORT, [::1]:PORT or localhost:PORT); profiles are not for the network", addr)
	}
	return nil
}

// debugHandler serves net/http/pprof under /debug/pprof/.
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// runDebug serves debugHandler on ln, over plain HTTP, until ctx ends.
func runDebug(ctx context.Context, g *errgroup.Group, ln net.Listener) {
	s := &http.Server{Handler: debugHandler(), ReadHeaderTimeout: 10 * time.Second}
	g.Go(func() error {
		if err := s.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		// A CPU profile being taken is cut short: nothing waits for it.
		return s.Close()
	})
}
