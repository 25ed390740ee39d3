package review

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/accessibility"
	"github.com/chromedp/chromedp"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/testbrowser"
)

// The viewport the pages are checked at: a laptop's browser window, where
// the list once overflowed sideways and its time column wrapped.
const (
	viewportW = 1280
	viewportH = 900
)

// browserStep bounds one step in the browser; the machine may be busy.
const browserStep = 60 * time.Second

// ui is the review UI served over TLS on loopback to a headless
// Chromium.
type ui struct {
	t    *testing.T
	f    *fixture
	base string
	ctx  context.Context
}

// newUI serves a fixture with a history of two weeks, exceptions and a
// node's report of a build, and starts Chromium at 1280×900, resolving
// no host name so that the pages can reach nothing but the server.
func newUI(t *testing.T) *ui {
	t.Helper()
	f, _ := exceptionsFixture(t)
	f.addHistory()
	built := t0.Add(-2 * time.Hour)
	if _, _, err := f.store.AddReport(t.Context(), evidence.Report{Node: "worker-3", Sensor: "ebpf", Reporter: "system:serviceaccount:buildguard-node-agent:node-agent",
		Builds: []evidence.Build{{Source: "agent", EventID: "b1", Tool: "docker", ImageID: "sha256:" + strings.Repeat("c", 64), Started: built, Finished: built.Add(time.Minute)}},
		Connections: []evidence.Connection{{Source: "agent", EventID: "c1", Time: built.Add(20 * time.Second), Process: "wget", PID: 4242,
			DestIP: netip.MustParseAddr("203.0.113.9"), DestPort: 8080}},
	}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(f.h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener.Close()
	srv.Listener = ln
	srv.StartTLS()
	t.Cleanup(srv.Close)

	bctx := testbrowser.Start(t, t.Context(), chromedp.WindowSize(viewportW, viewportH))
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(viewportW, viewportH)); err != nil {
		t.Fatalf("viewport of %s: %v", testbrowser.ChromiumPath, err)
	}
	return &ui{t: t, f: f, base: srv.URL, ctx: bctx}
}

// do runs browser actions with a deadline.
func (u *ui) do(what string, actions ...chromedp.Action[chromedp.Void]) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(u.ctx, browserStep)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		u.t.Fatalf("%s: %v\npage: %s", what, err, u.text("body"))
	}
}

// eval evaluates a JavaScript expression in the page and decodes its
// value into v.
func (u *ui) eval(js string, v any) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(u.ctx, browserStep)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](js))
	if err != nil {
		u.t.Fatalf("evaluating %s: %v", js, err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		u.t.Fatalf("evaluating %s: %v (%s)", js, err, raw)
	}
}

// text is what a person sees of the elements sel: their rendered text.
func (u *ui) text(sel string) string {
	ctx, cancel := context.WithTimeout(u.ctx, 10*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`[...document.querySelectorAll(%q)].map(e => e.innerText).join("\n")`, sel)))
	if err != nil {
		return "(no text: " + err.Error() + ")"
	}
	return s
}

// open loads path and waits for it.
func (u *ui) open(path string) {
	u.t.Helper()
	u.do("open "+path, chromedp.Navigate(u.base+path))
	u.waitFor(`location.pathname + location.search === ` + jsString(path))
}

// waitFor waits until the JavaScript condition holds and the page has
// loaded. It asks again and again: a navigation destroys whatever waits
// in the page.
func (u *ui) waitFor(cond string) {
	u.t.Helper()
	u.do("wait for "+cond, chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		expr := `(` + cond + `) && document.readyState === "complete"`
		for {
			ok, err := chromedp.Evaluate[bool](expr)(ctx, t)
			if err == nil && ok {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%w (last: %v)", ctx.Err(), err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}))
}

// press types keys (chromedp/kb names them: "\t" is Tab, "\r" Enter) to
// whatever has the focus.
func (u *ui) press(keys string) {
	u.t.Helper()
	u.do(fmt.Sprintf("press %q", keys), chromedp.KeyEvent(keys))
}

func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// login logs alice in with the keyboard alone: the token field, then
// Enter.
func (u *ui) login() {
	u.t.Helper()
	u.open("/login")
	// Tab from the top: the skip link, the brand, then the form.
	u.tabTo(`#token`, 5)
	u.press("alice-token\r")
	u.waitFor(`location.pathname === "/"`)
}

// focused describes the element that has the focus.
const focusedJS = `(() => { const e = document.activeElement; if (!e || e === document.body) return "";
  const name = e.getAttribute("aria-label") || e.innerText || e.value || e.id || "";
  return e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + " " + name.trim().replace(/\s+/g, " ").slice(0, 60); })()`

// tabTo presses Tab until the element sel has the focus, at most n times.
func (u *ui) tabTo(sel string, n int) {
	u.t.Helper()
	for range n {
		u.press("\t")
		var ok bool
		u.eval(fmt.Sprintf(`document.activeElement === document.querySelector(%q)`, sel), &ok)
		if ok {
			return
		}
	}
	var at string
	u.eval(focusedJS, &at)
	u.t.Fatalf("%d presses of Tab did not reach %s; the focus is on %q", n, sel, at)
}

// The pages, as a person reaches them.
var uiPages = []struct {
	name, path string
}{
	{"overview", "/"},
	{"list", "/decisions?since=all&verdict=deny&verdict=would-deny&verdict=warn&verdict=allow"},
	{"detail", "/decisions/" + nodeBuiltID},
	{"image", "/images/sha256:" + strings.Repeat("a", 64)},
	{"exceptions", "/exceptions"},
}

// TestBrowserPages renders every page in Chromium at 1280×900 and checks
// what a person sees (golden text of the page's main part), that nothing
// overflows sideways, that the list's time column is one line, that
// digests are cut on screen but whole in the page and the tooltip, and
// what assistive technology gets: every control and image has a name,
// every chart's text alternative says exactly what it draws.
func TestBrowserPages(t *testing.T) {
	u := newUI(t)
	u.login()
	for _, p := range uiPages {
		t.Run(p.name, func(t *testing.T) {
			u.t = t
			defer func() { u.t = t }()
			u.open(p.path)
			checkGolden(t, filepath.Join("browser", p.name+".txt"), []byte(normalizeText(u.text("main"))+"\n"))
			u.checkLayout()
			u.checkAccessibility()
		})
	}
}

// normalizeText drops the trailing blanks of lines and runs of empty
// lines, which differ with nothing a person sees.
func normalizeText(s string) string {
	var out []string
	for l := range strings.Lines(s) {
		l = strings.TrimRight(l, " \t\r\n\u00a0")
		if l == "" && (len(out) == 0 || out[len(out)-1] == "") {
			continue
		}
		out = append(out, l)
	}
	return strings.TrimSpace(strings.Join(out, "\n"))
}

// checkLayout checks the page as laid out at 1280 px.
func (u *ui) checkLayout() {
	u.t.Helper()
	var l struct {
		ScrollWidth, Width int
		Wrapped            []string
		Digests            []struct {
			Text, Title, Href string
			Cut               bool
		}
	}
	u.eval(`(() => {
  const lines = e => { const r = document.createRange(); r.selectNodeContents(e);
    const tops = [...r.getClientRects()].filter(x => x.width > 0).map(x => x.top).sort((a, b) => a - b);
    let n = 0, last = -1e9; for (const t of tops) { if (t - last > 4) { n++; last = t; } } return n; };
  return {
    scrollWidth: document.documentElement.scrollWidth, width: document.documentElement.clientWidth,
    wrapped: [...document.querySelectorAll("td.when")].filter(e => lines(e) > 1).map(e => e.innerText),
    digests: [...document.querySelectorAll(".digest")].map(e => ({text: e.textContent.trim(), title: e.title,
      href: e.getAttribute("href") || "", cut: e.scrollWidth > e.clientWidth})),
  };
})()`, &l)
	if l.ScrollWidth > l.Width {
		u.t.Errorf("the page is %d px wide in a %d px window: it scrolls sideways", l.ScrollWidth, l.Width)
	}
	if len(l.Wrapped) > 0 {
		u.t.Errorf("time cells wrap onto more lines: %q", l.Wrapped)
	}
	for _, d := range l.Digests {
		if !digestRE.MatchString(d.Text) || d.Title != d.Text {
			u.t.Errorf("digest %q (tooltip %q): want the whole digest in the page and its tooltip", d.Text, d.Title)
		}
		if !d.Cut {
			u.t.Errorf("digest %q is shown whole; want it cut on screen", d.Text)
		}
		if d.Href != "" && d.Href != "/images/"+d.Text {
			u.t.Errorf("digest %q links %q, want its image page", d.Text, d.Href)
		}
	}
}

// axNode is a node of Chromium's accessibility tree, as the test reads it.
type axNode struct {
	Role, Name string
}

func (u *ui) axTree() []axNode {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(u.ctx, browserStep)
	defer cancel()
	res, err := chromedp.Call(ctx, accessibility.GetFullAXTree, accessibility.GetFullAXTreeParams{})
	if err != nil {
		u.t.Fatalf("accessibility tree: %v", err)
	}
	var out []axNode
	str := func(v *accessibility.Value) string {
		var s string
		if v != nil {
			_ = json.Unmarshal(v.Value, &s)
		}
		return s
	}
	for _, n := range res.Nodes {
		if !n.Ignored {
			out = append(out, axNode{Role: str(n.Role), Name: strings.TrimSpace(str(n.Name))})
		}
	}
	return out
}

// checkAccessibility checks what Chromium gives assistive technology:
// one main landmark and one level-1 heading; a name for every link,
// button, field and image; each chart an image named by its text
// alternative, whose values and total are those the chart draws.
func (u *ui) checkAccessibility() {
	u.t.Helper()
	var images []string
	mains := 0
	for _, n := range u.axTree() {
		switch n.Role {
		case "main":
			mains++
		case "link", "button", "textbox", "combobox", "checkbox", "searchbox", "image", "img":
			if n.Name == "" {
				u.t.Errorf("a %s without an accessible name", n.Role)
			}
		}
		if n.Role == "image" || n.Role == "img" {
			images = append(images, n.Name)
		}
	}
	if mains != 1 {
		u.t.Errorf("%d main landmarks, want 1", mains)
	}
	var dom struct {
		H1     int
		Charts []struct {
			Label string
			Bars  []string
		}
	}
	u.eval(`({h1: document.querySelectorAll("h1").length,
  charts: [...document.querySelectorAll("svg.spark")].map(s => ({label: s.getAttribute("aria-label") || "",
    bars: [...s.querySelectorAll("rect > title")].map(t => t.textContent)}))})`, &dom)
	if dom.H1 != 1 {
		u.t.Errorf("%d level-1 headings, want 1", dom.H1)
	}
	var labels []string
	for _, c := range dom.Charts {
		labels = append(labels, c.Label)
		if err := chartSaysWhatItDraws(c.Label, c.Bars); err != nil {
			u.t.Errorf("chart %q: %v", c.Label, err)
		}
	}
	// Each chart is one image to assistive technology (its bars are not
	// read one by one), named by its text alternative.
	slices.Sort(images)
	slices.Sort(labels)
	if !slices.Equal(images, labels) {
		u.t.Errorf("images in the accessibility tree: %q\nwant the charts' text alternatives: %q", images, labels)
	}
}

// chartSaysWhatItDraws compares a chart's text alternative ("WHAT, FROM
// to TO: 1, 0, 2. 3 in all; most on X (2).") with its bars' titles
// ("DAY: N").
func chartSaysWhatItDraws(label string, bars []string) error {
	_, rest, ok := strings.Cut(label, ": ")
	values, total, ok2 := strings.Cut(rest, ". ")
	if !ok || !ok2 {
		return fmt.Errorf("not a chart's text alternative")
	}
	var drawn []string
	sum := 0
	for _, b := range bars {
		_, n, _ := strings.Cut(b, ": ")
		drawn = append(drawn, n)
		var v int
		fmt.Sscan(n, &v)
		sum += v
	}
	if got := strings.Split(values, ", "); !slices.Equal(got, drawn) {
		return fmt.Errorf("says %q, draws %q", got, drawn)
	}
	if want := fmt.Sprintf("%d in all", sum); !strings.HasPrefix(total, want) {
		return fmt.Errorf("says %q, draws %d in all", total, sum)
	}
	return nil
}

// TestBrowserKeyboard: every page can be used with the keyboard alone.
// Tab reaches every control once, in the order of the page, each with a
// visible focus ring, and leaves the page at the end; the skip link
// moves the focus to the content; the bars of the charts, whose counts
// are links in the text, are not stops of their own. Enter follows a
// link and submits a form: the list pages, the overview's tables open,
// an exception is revoked.
func TestBrowserKeyboard(t *testing.T) {
	u := newUI(t)
	u.login()
	for _, p := range uiPages {
		t.Run(p.name, func(t *testing.T) {
			u.t = t
			defer func() { u.t = t }()
			u.open(p.path)
			u.checkTabOrder()
		})
	}

	t.Run("skip link", func(t *testing.T) {
		u.t = t
		u.open("/")
		u.press("\t")
		var at string
		u.eval(focusedJS, &at)
		if at != "a Skip to content" {
			t.Fatalf("the first Tab focuses %q, want the skip link", at)
		}
		var visible bool
		u.eval(`document.activeElement.getBoundingClientRect().left >= 0`, &visible)
		if !visible {
			t.Error("the focused skip link is off screen")
		}
		u.press("\r")
		u.press("\t")
		var inMain bool
		u.eval(`document.querySelector("main").contains(document.activeElement)`, &inMain)
		u.eval(focusedJS, &at)
		if !inMain {
			t.Errorf("after the skip link, Tab focuses %q, outside the content", at)
		}
	})

	t.Run("overview tables", func(t *testing.T) {
		u.t = t
		u.open("/")
		u.tabTo(`#h-verdicts ~ details > summary`, 200)
		u.press("\r")
		var open bool
		u.eval(`document.querySelector("#h-verdicts ~ details").open`, &open)
		if !open {
			t.Fatal("Enter on the summary does not open the table of counts")
		}
		// Its first count of today is a stop now, and leads to the list.
		u.tabTo(`#h-verdicts ~ details table.perday a`, 20)
		var label string
		u.eval(`document.activeElement.getAttribute("aria-label")`, &label)
		u.press("\r")
		u.waitFor(`location.pathname === "/decisions"`)
		if day, _, _ := strings.Cut(label, ":"); !strings.Contains(u.text("main"), "on "+day+" (UTC)") {
			t.Errorf("the count %q led to a list that is not of its day:\n%s", label, u.text("main"))
		}
	})

	t.Run("list pages", func(t *testing.T) {
		u.t = t
		u.open("/decisions?since=all&limit=2")
		u.tabTo(`a[rel="next"]`, 60)
		u.press("\r")
		u.waitFor(`location.search.includes("before=")`)
		if got := u.text("main"); !strings.Contains(got, "Decisions 3–4, newest first.") {
			t.Errorf("Enter on Older did not show the second page:\n%s", got)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		u.t = t
		u.open("/exceptions")
		u.tabTo(`button[aria-label="Revoke staging/by-hand"]`, 60)
		u.press("\r")
		u.waitFor(`location.search.includes("revoked=")`)
		if got := u.text("main"); !strings.Contains(got, "Exception staging/by-hand revoked.") || strings.Contains(got, "INC-9") {
			t.Errorf("after Enter on Revoke, the page says:\n%s", got)
		}
	})
}

// checkTabOrder presses Tab through the page from its top and compares
// the stops with the page's controls.
func (u *ui) checkTabOrder() {
	u.t.Helper()
	var want []string
	u.eval(`[...document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea, summary, [tabindex]')]
  .filter(e => e.tabIndex >= 0 && !e.disabled && e.getClientRects().length > 0 && !e.closest("details:not([open]) > :not(summary)"))
  .map(e => { const name = e.getAttribute("aria-label") || e.innerText || e.value || e.id || "";
    return e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + " " + name.trim().replace(/\s+/g, " ").slice(0, 60); })`, &want)
	var got, noRing []string
	last := 0
	for range 3*len(want) + 2 {
		u.press("\t")
		var s struct {
			At   string
			ID   int
			Ring bool
		}
		u.eval(`({at: `+focusedJS+`, id: (() => { const m = window.tabIDs ||= new WeakMap(), e = document.activeElement;
  if (!m.has(e)) m.set(e, window.tabN = (window.tabN || 0) + 1); return m.get(e); })(), ring: (() => { const e = document.activeElement; if (!e || e === document.body) return true;
  const c = getComputedStyle(e); return (c.outlineStyle !== "none" && parseFloat(c.outlineWidth) > 0) || c.boxShadow !== "none"; })()})`, &s)
		if s.At == "" || (len(got) > 0 && s.At == got[0]) {
			break // past the last control: the focus left the page, or came round
		}
		if s.ID == last {
			continue // a field of parts (a date's day, month, year) stops at each
		}
		last = s.ID
		got = append(got, s.At)
		if !s.Ring {
			noRing = append(noRing, s.At)
		}
	}
	if !slices.Equal(got, want) {
		u.t.Errorf("Tab stops:\n%s\nwant the page's controls in order:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(noRing) > 0 {
		u.t.Errorf("focused without a visible focus ring: %q", noRing)
	}
}
