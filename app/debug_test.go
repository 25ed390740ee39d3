package app

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"golang.org/x/sync/errgroup"
)

// TestRunDebug: --debug-listen serves the profiles, and stops with the
// context.
func TestRunDebug(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	var g errgroup.Group
	runDebug(ctx, &g, ln)
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/heap?debug=1"} {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "goroutine") && !strings.Contains(string(b), "heap") {
			t.Errorf("GET %s = %d %.200q, want a profile", path, resp.StatusCode, b)
		}
	}
	cancel()
	if err := g.Wait(); err != nil {
		t.Errorf("runDebug ended with %v, want nil", err)
	}
	if _, err := http.Get("http://" + ln.Addr().String() + "/debug/pprof/"); err == nil {
		t.Error("the debug endpoint still answers after its context ended")
	}
}
