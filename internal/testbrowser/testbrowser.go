// Package testbrowser starts the headless Chromium in which the tests of
// the review UI drive its pages.
package testbrowser

import (
	"context"
	"os"
	"testing"

	"github.com/chromedp/chromedp"
)

// ChromiumPath is Debian's chromium, which scripts/deps.sh installs.
const ChromiumPath = "/usr/bin/chromium"

// Start starts a headless Chromium for t, stopped when t ends, and
// returns the context its actions run in. Its profile is fresh, it
// resolves no host name, so that a page can reach nothing but the
// loopback addresses it is given, and it ignores certificate errors (the
// servers under test have certificates of their own making). extra adds
// to these options. The browser lives as long as ctx: give it one
// without a deadline, and put deadlines on the actions.
func Start(t testing.TB, ctx context.Context, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	if _, err := os.Stat(ChromiumPath); err != nil {
		t.Fatalf("the review UI is tested in a real browser, and %s is missing (install Debian's chromium package): %v", ChromiumPath, err)
	}
	opts := append([]chromedp.ExecAllocatorOption{
		chromedp.ExecPath(ChromiumPath),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"),
		chromedp.IgnoreCertErrors,
		chromedp.UserDataDir(t.TempDir()),
	}, extra...)
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first actions start the browser, which lives as long as bctx:
	// they run in bctx itself, not in a context with a deadline.
	if err := chromedp.Do(bctx); err != nil {
		t.Fatalf("starting %s: %v", ChromiumPath, err)
	}
	return bctx
}
