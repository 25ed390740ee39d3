package nodereport

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"buildguard.dev/buildguard/internal/clock/clocktest"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of testdata/fixtures")

// parseTestNow is the clock of the parser tests: fixtures describe a build on
// the morning of 2026-11-26.
var parseTestNow = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

func parseTestClock() ParseOption { return ParseClock(clocktest.New(parseTestNow)) }

// parserFor returns the parser of a format, with the test clock, as one
// signature.
func parserFor(format string) func(body []byte, node string, opts ...ParseOption) (Parsed, error) {
	switch format {
	case "agent":
		return func(body []byte, _ string, opts ...ParseOption) (Parsed, error) {
			return ParseAgent(body, append([]ParseOption{parseTestClock()}, opts...)...)
		}
	case "falco":
		return withTestClock(ParseFalco)
	case "tetragon":
		return withTestClock(ParseTetragon)
	case "docker":
		return withTestClock(ParseDocker)
	}
	panic("no parser for " + format)
}

func withTestClock(p func([]byte, string, ...ParseOption) (Parsed, error)) func([]byte, string, ...ParseOption) (Parsed, error) {
	return func(body []byte, node string, opts ...ParseOption) (Parsed, error) {
		return p(body, node, append([]ParseOption{parseTestClock()}, opts...)...)
	}
}

var parseSources = map[string]string{"agent": "agent", "falco": "falco", "tetragon": "tetragon", "docker": "docker"}

// TestParseFixtures parses every payload under testdata/fixtures with the
// parser of its directory and compares the result with its .golden file;
// go test -run ParseFixtures -update rewrites them.
func TestParseFixtures(t *testing.T) {
	paths, err := filepath.Glob("testdata/fixtures/*/*")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, path := range paths {
		if strings.HasSuffix(path, ".golden") {
			continue
		}
		n++
		format := filepath.Base(filepath.Dir(path))
		t.Run(format+"/"+filepath.Base(path), func(t *testing.T) {
			body, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			node := ""
			if format == "docker" {
				node = "worker-3"
			}
			got, err := parserFor(format)(body, node)
			checkParsed(t, format, body, got, err)
			if err != nil {
				t.Fatalf("Parse(%s) error: %v", path, err)
			}
			if len(got.Report.Builds)+len(got.Report.Connections) == 0 {
				t.Errorf("Parse(%s) found nothing", path)
			}
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			enc.SetIndent("", "  ")
			if err := enc.Encode(got); err != nil {
				t.Fatal(err)
			}
			out := buf.Bytes()
			golden := strings.TrimSuffix(path, filepath.Ext(path)) + ".golden"
			if *updateGolden {
				if err := os.WriteFile(golden, out, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -run ParseFixtures -update)", err)
			}
			if !bytes.Equal(out, want) {
				t.Errorf("Parse(%s) = %s, want %s", path, out, want)
			}
		})
	}
	if n < 8 {
		t.Errorf("found %d fixtures, want at least 2 per format", n)
	}
}

// TestParseBatchShape covers what all event-stream formats share: how a
// body splits into items and when it is refused as a whole.
func TestParseBatchShape(t *testing.T) {
	alert := `{"rule":"r","time":"2026-11-26T10:00:00Z","output_fields":{"fd.sip":"203.0.113.9","fd.sport":80}}`
	for _, tc := range []struct {
		name       string
		body       string
		wantErr    string // substring of the *FormatError; "" for none
		items      int    // connections + errors + ignored
		errIndexes []int
	}{
		{name: "one object", body: alert, items: 1},
		{name: "ndjson with blank lines and CRLF", body: alert + "\r\n\r\n" + alert + "\n", items: 2},
		{name: "array", body: "[" + alert + "," + alert + "]", items: 2},
		{name: "empty array", body: "[]", items: 0},
		{name: "pretty stream", body: "{\n \"rule\": \"r\"\n}\n{\n \"rule\": \"r\"\n}\n", items: 2},
		{name: "broken line among good", body: alert + "\n{\"rule\":\n" + alert, items: 3, errIndexes: []int{1}},
		{name: "non-object line", body: alert + "\n42\n", items: 2, errIndexes: []int{1}},
		{name: "array of non-objects", body: `[1,null,` + alert + "]", items: 3, errIndexes: []int{0, 1}},
		{name: "empty", body: " \n\t", wantErr: "empty body"},
		{name: "not JSON", body: "hello\nworld", wantErr: "not JSON"},
		{name: "truncated object", body: `{"rule":"r","time":`, wantErr: "not JSON"},
		{name: "string", body: `"alert"`, wantErr: "got string"},
		{name: "number", body: `12`, wantErr: "got number"},
		{name: "null", body: `null`, wantErr: "got null"},
		{name: "broken array", body: "[" + alert + ",{]", wantErr: "not a JSON array"},
		{name: "truncated array", body: "[" + alert, wantErr: "not a JSON array"},
		{name: "data after array", body: "[]\n{}", wantErr: "data after"},
		{name: "too many lines", body: strings.Repeat(alert+"\n", 4), wantErr: "more than 3 items"},
		{name: "too many elements", body: "[" + strings.Repeat(alert+",", 3) + alert + "]", wantErr: "more than 3 items"},
		{name: "too many broken lines", body: strings.Repeat("{x\n", 3) + alert, wantErr: "more than 3 items"},
		{name: "deeply nested array", body: strings.Repeat("[", 1<<20), wantErr: "not a JSON array"},
		{name: "deeply nested object", body: strings.Repeat(`{"a":`, 1<<18), wantErr: "not JSON"},
		{name: "deeply nested item", body: alert + "\n" + `{"rule":"r","output_fields":` + strings.Repeat(`{"a":`, 20000) + "1" + strings.Repeat("}", 20000) + "}",
			items: 2, errIndexes: []int{1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFalco([]byte(tc.body), "node-a", parseTestClock(), ParseMaxItems(3))
			checkParsed(t, "falco", []byte(tc.body), got, err)
			if tc.wantErr != "" {
				var fe *FormatError
				if !errors.As(err, &fe) || !strings.Contains(fe.Reason, tc.wantErr) {
					t.Fatalf("ParseFalco(%q) error = %v, want a FormatError containing %q", tc.body, err, tc.wantErr)
				}
				if tooMany := strings.HasPrefix(tc.wantErr, "more than"); errors.Is(err, ErrTooManyItems) != tooMany {
					t.Errorf("errors.Is(ParseFalco(%q), ErrTooManyItems) = %v, want %v", tc.body, !tooMany, tooMany)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseFalco(%q) error = %v", tc.body, err)
			}
			if n := len(got.Report.Connections) + len(got.Errors) + got.Ignored; n != tc.items {
				t.Errorf("ParseFalco(%q) accounted for %d items, want %d", tc.body, n, tc.items)
			}
			var idx []int
			for _, e := range got.Errors {
				idx = append(idx, e.Index)
			}
			if diff := cmp.Diff(tc.errIndexes, idx); diff != "" {
				t.Errorf("ParseFalco(%q) indexes of errors (-want +got):\n%s%+v", tc.body, diff, got.Errors)
			}
		})
	}
}

// TestParseMaxItemsDefault checks the default cap and that its error names it.
func TestParseMaxItemsDefault(t *testing.T) {
	line := `{"Type":"container","Action":"start","Actor":{"ID":"abc"},"timeNano":1795688169000000000}` + "\n"
	body := []byte(strings.Repeat(line, MaxBatchItems))
	got, err := ParseDocker(body, "n", parseTestClock())
	if err != nil || got.Ignored != MaxBatchItems {
		t.Fatalf("ParseDocker(%d events) = %d ignored, %v; want all ignored", MaxBatchItems, got.Ignored, err)
	}
	body = append(body, line...)
	_, err = ParseDocker(body, "n", parseTestClock())
	var fe *FormatError
	if !errors.As(err, &fe) || !strings.Contains(fe.Error(), "10000") || !errors.Is(err, ErrTooManyItems) {
		t.Fatalf("ParseDocker(%d events) error = %v, want a FormatError naming the cap 10000", MaxBatchItems+1, err)
	}
}

func TestParseCleanText(t *testing.T) {
	for _, tc := range []struct {
		in   string
		max  int
		want string
	}{
		{"  wget\x00-q\x00http://x  ", 100, "wget -q http://x"},
		{"abc\xffdef", 100, "abc\uFFFDdef"},
		{"ééé", 5, "éé"}, // 6 bytes: cut before the third é, not inside it
		{"ab  cd", 3, "ab"},
		{"", 10, ""},
	} {
		if got := cleanText(tc.in, tc.max); got != tc.want {
			t.Errorf("cleanText(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}

func TestParseEventIDs(t *testing.T) {
	long := strings.Repeat("x", limID+1)
	if got := cleanEventID(long); !strings.HasPrefix(got, "sha256:") || len(got) != 71 {
		t.Errorf("cleanEventID(%d bytes) = %q, want its SHA-256", len(long), got)
	}
	if got := cleanEventID(" id-1 "); got != "id-1" {
		t.Errorf("cleanEventID(%q) = %q, want %q", " id-1 ", got, "id-1")
	}
	// Canonical JSON: key order, white space and escapes do not change the ID.
	a := canonicalID("p", []byte(`{"b":1,"a":"x","n":1795688169000000001}`))
	b := canonicalID("p", []byte("{ \"a\" : \"\\u0078\",\n \"n\":1795688169000000001, \"b\":1 }"))
	c := canonicalID("p", []byte(`{"b":1,"a":"x","n":1795688169000000002}`))
	if a != b || a == c {
		t.Errorf("canonicalID: %s, %s, %s; want the first two equal and the third different", a, b, c)
	}
}

// countItems counts the items of a body without the parser's splitter.
func countItems(format string, body []byte) int {
	body = bytes.TrimPrefix(body, []byte("\xef\xbb\xbf"))
	if format == "agent" {
		var env struct{ Builds, Connections []json.RawMessage }
		if json.Unmarshal(body, &env) != nil {
			return -1
		}
		return len(env.Builds) + len(env.Connections)
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var items []json.RawMessage
		if json.Unmarshal(trimmed, &items) != nil {
			return -1
		}
		return len(items)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	n := 0
	for {
		var v json.RawMessage
		err := dec.Decode(&v)
		if err == nil {
			n++
			continue
		}
		if err.Error() == "EOF" {
			return n
		}
		break
	}
	n = 0
	for _, line := range bytes.Split(body, []byte("\n")) {
		if len(bytes.TrimSpace(line)) > 0 {
			n++
		}
	}
	return n
}

// checkParsed checks what must hold of any parse: every item accounted for
// once, every build and connection complete and bounded, errors in order.
func checkParsed(t *testing.T, format string, body []byte, p Parsed, err error) {
	t.Helper()
	if err != nil {
		var fe *FormatError
		if !errors.As(err, &fe) {
			t.Fatalf("%s: error %v (%T) is not a *FormatError", format, err, err)
		}
		if fe.Format != format || fe.Reason == "" || len(fe.Reason) > limReason || !utf8.ValidString(fe.Reason) ||
			(fe.Err != nil && fe.Err != ErrTooManyItems) {
			t.Fatalf("%s: malformed FormatError %+v", format, fe)
		}
		if diff := cmp.Diff(Parsed{}, p, exact); diff != "" {
			t.Fatalf("%s: FormatError %v with a non-empty result (-want +got):\n%s", format, err, diff)
		}
		return
	}
	r := p.Report
	total := len(r.Builds) + len(r.Connections) + len(p.Errors) + p.Ignored
	if n := countItems(format, body); n != total {
		t.Fatalf("%s: %d builds + %d connections + %d errors + %d ignored = %d, want %d items", format,
			len(r.Builds), len(r.Connections), len(p.Errors), p.Ignored, total, n)
	}
	if p.Ignored < 0 || r.Sensor == "" {
		t.Fatalf("%s: Ignored %d, Sensor %q", format, p.Ignored, r.Sensor)
	}
	last := -1
	for _, e := range p.Errors {
		if e.Index <= last || e.Index >= total {
			t.Fatalf("%s: error index %d out of order or range (previous %d, %d items)", format, e.Index, last, total)
		}
		last = e.Index
		if e.Reason == "" || len(e.Reason) > limReason || !utf8.ValidString(e.Reason) {
			t.Fatalf("%s: error %d has reason %q", format, e.Index, e.Reason)
		}
	}
	text := func(what, s string, max int) {
		t.Helper()
		if len(s) > max || !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
			t.Fatalf("%s: %s %q is longer than %d bytes, not UTF-8 or has NUL", format, what, s, max)
		}
	}
	item := func(what, source, eventID, node string) {
		t.Helper()
		if source != parseSources[format] {
			t.Fatalf("%s: %s Source %q", format, what, source)
		}
		if eventID == "" || node == "" {
			t.Fatalf("%s: %s EventID %q Node %q, want both", format, what, eventID, node)
		}
		text(what+" EventID", eventID, limID)
		text(what+" Node", node, limName)
	}
	checkTimeOK := func(what string, tm time.Time, required bool) {
		t.Helper()
		if tm.IsZero() {
			if required {
				t.Fatalf("%s: %s is zero", format, what)
			}
			return
		}
		if tm.After(parseTestNow.Add(MaxFutureSkew)) || tm.Location() != time.UTC {
			t.Fatalf("%s: %s %v is too far in the future or not UTC", format, what, tm)
		}
	}
	for _, b := range r.Builds {
		item("build", b.Source, b.EventID, b.Node)
		text("build Tool", b.Tool, limName)
		text("build CgroupID", b.CgroupID, limID)
		if b.ImageID != "" {
			if id, ok := normImageID(b.ImageID); !ok || id != b.ImageID {
				t.Fatalf("%s: build ImageID %q", format, b.ImageID)
			}
		}
		if len(b.Tags) > limTags || len(b.PIDs) > limPIDs || len(b.ContainerIDs) > limContainerIDs || len(b.Steps) > limSteps {
			t.Fatalf("%s: build lists too long: %d tags, %d pids, %d containers, %d steps", format, len(b.Tags), len(b.PIDs), len(b.ContainerIDs), len(b.Steps))
		}
		for _, s := range b.Tags {
			text("tag", s, limRef)
			if s == "" {
				t.Fatalf("%s: empty tag", format)
			}
		}
		for _, s := range b.ContainerIDs {
			text("build ContainerID", s, limID)
		}
		for _, s := range b.Steps {
			text("step", s, limStep)
		}
		for _, pid := range b.PIDs {
			if pid <= 0 || pid > limPID {
				t.Fatalf("%s: build PID %d", format, pid)
			}
		}
		checkTimeOK("build Started", b.Started, true)
		checkTimeOK("build Finished", b.Finished, false)
		if !b.Finished.IsZero() && b.Finished.Before(b.Started) {
			t.Fatalf("%s: build finished %v before it started %v", format, b.Finished, b.Started)
		}
	}
	for _, c := range r.Connections {
		item("connection", c.Source, c.EventID, c.Node)
		if !c.DestIP.IsValid() || c.DestIP.Zone() != "" || c.DestIP.Is4In6() {
			t.Fatalf("%s: connection DestIP %v", format, c.DestIP)
		}
		if c.DestPort < 1 || c.DestPort > 65535 {
			t.Fatalf("%s: connection DestPort %d", format, c.DestPort)
		}
		if c.PID < 0 || c.PID > limPID {
			t.Fatalf("%s: connection PID %d", format, c.PID)
		}
		checkTimeOK("connection Time", c.Time, true)
		text("Process", c.Process, limName)
		text("Cmdline", c.Cmdline, limCmdline)
		text("ContainerID", c.ContainerID, limID)
		text("CgroupID", c.CgroupID, limID)
		text("DestName", c.DestName, limName)
	}
}

// exact compares parses as reflect.DeepEqual would: addresses and times
// with ==, so that a time in another location than the one wanted differs.
var exact = cmpopts.EquateComparable(netip.Addr{}, time.Time{})

// wantIP and wantTime abbreviate expected values in the parsers' tables.
func wantIP(s string) netip.Addr { return netip.MustParseAddr(s) }

func wantTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		panic(err)
	}
	return t.UTC()
}

// itemReasons lists a Parsed's errors, one a line, for failure messages.
func itemReasons(p Parsed) string {
	var b strings.Builder
	for _, e := range p.Errors {
		fmt.Fprintf(&b, "%d: %s\n", e.Index, e.Reason)
	}
	return b.String()
}

// BenchmarkParse parses batches of 1,000 items made of each format's
// fixture lines.
func BenchmarkParse(b *testing.B) {
	for _, tc := range []struct{ format, fixture string }{
		{"falco", "testdata/fixtures/falco/alerts.ndjson"},
		{"tetragon", "testdata/fixtures/tetragon/export.jsonl"},
		{"docker", "testdata/fixtures/docker/events.jsonl"},
	} {
		lines, err := os.ReadFile(tc.fixture)
		if err != nil {
			b.Fatal(err)
		}
		var body []byte
		for n := 0; n < 1000; n += bytes.Count(lines, []byte("\n")) {
			body = append(body, lines...)
		}
		parse := parserFor(tc.format)
		b.Run(tc.format, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			for b.Loop() {
				if _, err := parse(body, "worker-3"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
