package nodereport

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock"
)

// This file holds what the parsers of node reports share: the result
// types, options, the splitting of a body into items, and the checks every
// item goes through. docs/node-reports.md describes the formats.

// MaxBatchItems is how many items one body may hold unless ParseMaxItems
// says otherwise; a larger body is refused as a whole with a *FormatError.
const MaxBatchItems = 10000

// MaxFutureSkew is how far after the parser's clock an item's time may lie;
// an item further in the future is an item error.
const MaxFutureSkew = 24 * time.Hour

// Bounds on what one item may carry. Longer strings are cut at a rune
// boundary; longer lists keep their first elements.
const (
	limCmdline      = 4096 // Connection.Cmdline
	limName         = 253  // node, process, tool and destination names
	limID           = 128  // event, container and cgroup IDs
	limRef          = 512  // one tag; a longer tag is dropped, not cut
	limStep         = 4096 // one build step
	limTags         = 64
	limPIDs         = 1024
	limContainerIDs = 256
	limSteps        = 1000
	limReason       = 512     // ItemError.Reason and FormatError.Reason
	limPID          = 1 << 22 // PID_MAX_LIMIT on 64-bit Linux
)

// ItemError is one item of a batch that could not be used. The other items
// of the batch are not affected by it.
type ItemError struct {
	// Index is the item's zero-based position in the batch: its element in
	// a JSON array, its value in newline-delimited JSON (blank lines do not
	// count), or, in a NodeReport, builds first and then connections.
	Index int `json:"index"`
	// Reason says what is wrong, beginning with where ("line 3: ",
	// "connections[1]: ") when that is not the Index alone.
	Reason string `json:"reason"`
}

// Parsed is the result of parsing a batch. Every item of the batch is
// accounted for exactly once: as one build or connection in Report, as one
// of Errors, or in Ignored.
type Parsed struct {
	// Report holds what could be used. Each build and connection has its
	// Source, a non-empty EventID and Node, and strings within bounds.
	Report evidence.Report
	// Errors lists the items that could not be used, in batch order.
	Errors []ItemError
	// Ignored counts well-formed events that carry no build or connection,
	// e.g. a Falco rule about files or a Docker container "die".
	Ignored int
}

// FormatError is a body that is unusable as a whole: not JSON, the wrong
// top-level shape, an invalid NodeReport envelope, or more items than the
// cap. No item of it was used.
type FormatError struct {
	Format string // "agent", "falco", "tetragon" or "docker"
	Reason string
	// Err is ErrTooManyItems when the body holds more items than the cap,
	// else nil.
	Err error
}

func (e *FormatError) Error() string {
	return e.Format + " report: " + e.Reason
}

func (e *FormatError) Unwrap() error { return e.Err }

// ErrTooManyItems is wrapped by the *FormatError of a body with more items
// than the cap (see ParseMaxItems); check it with errors.Is.
var ErrTooManyItems = errors.New("too many items in one batch")

// ParseOption changes how a Parse function reads a batch.
type ParseOption func(*parseConfig)

type parseConfig struct {
	clock    clock.Clock
	maxItems int
}

// ParseClock sets the clock that item times are checked against (no more
// than MaxFutureSkew ahead of it). The default, and what nil means, is
// the real clock.
func ParseClock(c clock.Clock) ParseOption {
	return func(cfg *parseConfig) { cfg.clock = clock.OrReal(c) }
}

// ParseMaxItems sets how many items one body may hold. The default, and
// what n < 1 means, is MaxBatchItems.
func ParseMaxItems(n int) ParseOption {
	return func(c *parseConfig) {
		if n >= 1 {
			c.maxItems = n
		}
	}
}

func newParseConfig(opts []ParseOption) parseConfig {
	c := parseConfig{clock: clock.Real{}, maxItems: MaxBatchItems}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	return c
}

// reportItem is what one item of a batch became: a build, a connection,
// or, when both are nil, nothing of use (ignored).
type reportItem struct {
	build *evidence.Build
	conn  *evidence.Connection
}

// rawItem is one item of a batch as it came, with the line it starts on
// (0 when the item is an element of a JSON array).
type rawItem struct {
	data []byte
	line int
}

// itemSink collects the outcomes of a batch's items.
type itemSink struct {
	now time.Time
	out Parsed
}

func (s *itemSink) add(index int, where string, it reportItem, err error) {
	switch {
	case err != nil:
		reason := err.Error()
		if where != "" {
			reason = where + ": " + reason
		}
		s.out.Errors = append(s.out.Errors, ItemError{Index: index, Reason: cleanText(reason, limReason)})
	case it.build != nil:
		s.out.Report.Builds = append(s.out.Report.Builds, *it.build)
	case it.conn != nil:
		s.out.Report.Connections = append(s.out.Report.Connections, *it.conn)
	default:
		s.out.Ignored++
	}
}

// eventItemFunc turns one item of an event stream (Falco, Tetragon,
// Docker) into a build, a connection or nothing. node is the caller's
// fallback node, already cleaned.
type eventItemFunc func(data []byte, node string, now time.Time) (reportItem, error)

// parseEvents is the driver of the event-stream formats: it splits the
// body, parses each item with fn, and fills the report's node and sensor.
func parseEvents(format, sensor string, body []byte, node string, opts []ParseOption, fn eventItemFunc) (Parsed, error) {
	cfg := newParseConfig(opts)
	items, err := splitBatch(format, body, cfg.maxItems)
	if err != nil {
		return Parsed{}, err
	}
	node = cleanText(node, limName)
	s := itemSink{now: cfg.clock.Now().UTC()}
	for i, raw := range items {
		where := ""
		if raw.line > 0 {
			where = "line " + strconv.Itoa(raw.line)
		}
		var it reportItem
		if k := jsonValueKind(raw.data); k != "object" {
			err = fmt.Errorf("want a JSON object, got %s", k)
		} else if it, err = fn(raw.data, node, s.now); err == nil {
			err = checkItemNode(it)
		}
		s.add(i, where, it, err)
	}
	s.out.Report.Sensor = sensor
	s.out.Report.Node = node
	if node == "" {
		s.out.Report.Node = commonNode(s.out.Report)
	}
	return s.out, nil
}

func checkItemNode(it reportItem) error {
	if (it.build != nil && it.build.Node == "") || (it.conn != nil && it.conn.Node == "") {
		return errors.New("no node: the event names none and the request gave none")
	}
	return nil
}

// commonNode is the node all items of r name, or "" when they differ or
// there are none.
func commonNode(r evidence.Report) string {
	node := ""
	for _, b := range r.Builds {
		if node != "" && b.Node != node {
			return ""
		}
		node = b.Node
	}
	for _, c := range r.Connections {
		if node != "" && c.Node != node {
			return ""
		}
		node = c.Node
	}
	return node
}

// splitBatch splits an event-stream body into its items: the elements of
// a JSON array; or the values of a stream of JSON values (one object,
// newline-delimited objects, or concatenated pretty-printed objects); or,
// when that stream does not parse, the non-blank lines of the body, so
// that one broken line does not hide the others.
func splitBatch(format string, body []byte, max int) ([]rawItem, error) {
	body = bytes.TrimPrefix(body, []byte("\xef\xbb\xbf")) // a UTF-8 byte order mark
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) == 0 {
		return nil, &FormatError{Format: format, Reason: "empty body"}
	}
	tooMany := &FormatError{Format: format, Reason: fmt.Sprintf("more than %d items in one request; send smaller batches", max), Err: ErrTooManyItems}
	if trimmed[0] == '[' {
		return splitArray(format, trimmed, max, tooMany)
	}
	items, ok, err := splitStream(body, max, tooMany)
	if err != nil {
		return nil, err
	}
	if ok {
		if len(items) == 1 && trimmed[0] != '{' {
			return nil, &FormatError{Format: format, Reason: fmt.Sprintf("want a JSON object, an array of objects, or newline-delimited objects; got %s", jsonValueKind(trimmed))}
		}
		return oneWithoutLine(items), nil
	}
	items, err = splitLines(format, body, max, tooMany)
	return oneWithoutLine(items), err
}

// oneWithoutLine drops the line number of a body's only item: it says
// nothing there.
func oneWithoutLine(items []rawItem) []rawItem {
	if len(items) == 1 {
		items[0].line = 0
	}
	return items
}

func splitArray(format string, body []byte, max int, tooMany error) ([]rawItem, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil {
		return nil, &FormatError{Format: format, Reason: "body is not JSON: " + describeJSONError(err)}
	}
	var items []rawItem
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, &FormatError{Format: format, Reason: "body is not a JSON array: " + describeJSONError(err)}
		}
		if len(items) == max {
			return nil, tooMany
		}
		items = append(items, rawItem{data: raw})
	}
	if _, err := dec.Token(); err != nil {
		return nil, &FormatError{Format: format, Reason: "body is not a JSON array: " + describeJSONError(err)}
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, &FormatError{Format: format, Reason: "data after the JSON array"}
	}
	return items, nil
}

// splitStream reads body as a stream of JSON values. ok is false when the
// stream does not parse.
func splitStream(body []byte, max int, tooMany error) (items []rawItem, ok bool, err error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	line, counted := 1, 0 // line is the line number at offset counted
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == io.EOF {
			return items, true, nil
		}
		if err != nil {
			return nil, false, nil
		}
		end := int(dec.InputOffset())
		start := end - len(raw)
		line += bytes.Count(body[counted:start], []byte{'\n'})
		counted = start
		if len(items) == max {
			return nil, false, tooMany
		}
		items = append(items, rawItem{data: raw, line: line})
	}
}

func splitLines(format string, body []byte, max int, tooMany error) ([]rawItem, error) {
	var items []rawItem
	valid := false
	for n, rest := 1, body; len(rest) > 0; n++ {
		line := rest
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			line, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		if len(items) == max {
			return nil, tooMany
		}
		valid = valid || json.Valid(line)
		items = append(items, rawItem{data: line, line: n})
	}
	if !valid {
		return nil, &FormatError{Format: format, Reason: "body is not JSON: no line of it is a JSON value"}
	}
	return items, nil
}

// jsonValueKind names the kind of the JSON value data begins with.
func jsonValueKind(data []byte) string {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return "nothing"
	}
	switch c := data[0]; {
	case c == '{':
		return "object"
	case c == '[':
		return "array"
	case c == '"':
		return "string"
	case c == 't' || c == 'f':
		return "boolean"
	case c == 'n':
		return "null"
	case c == '-' || (c >= '0' && c <= '9'):
		return "number"
	}
	return "something that is not JSON"
}

// describeJSONError turns a decoding error into a reason without Go type
// names.
func describeJSONError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		msg := "want " + goTypeKind(te.Type) + ", got " + te.Value
		if te.Field != "" {
			msg = te.Field + ": " + msg
		}
		return msg
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("invalid JSON at byte %d: %s", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
	}
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return "truncated JSON"
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func goTypeKind(t reflect.Type) string {
	if t == nil {
		return "another type"
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer in range"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	}
	return "another type"
}

// decodeItem decodes one item into v; strict refuses unknown fields.
func decodeItem(data []byte, v any, strict bool) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if strict {
		dec.DisallowUnknownFields()
	}
	if err := dec.Decode(v); err != nil {
		return errors.New(describeJSONError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	return nil
}

// cleanText makes s fit to store: valid UTF-8, NUL bytes turned to spaces,
// white space trimmed, at most max bytes (cut at a rune boundary).
func cleanText(s string, max int) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", " ")
	}
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	s = strings.TrimSpace(s)
	if len(s) > max {
		i := max
		for i > 0 && !utf8.RuneStart(s[i]) {
			i--
		}
		s = strings.TrimSpace(s[:i])
	}
	return s
}

// cleanEventID is an event ID as the source gave it, or its SHA-256 when
// it is longer than limID (a cut ID could collide with another).
func cleanEventID(s string) string {
	c := cleanText(s, len(s)+1)
	if len(c) > limID {
		return sha256ID([]byte(c))
	}
	return c
}

// cleanContainerID drops a runtime scheme ("containerd://") and Falco's
// "host" (no container).
func cleanContainerID(s string) string {
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	s = cleanText(s, limID)
	if s == "host" || s == "<NA>" {
		return ""
	}
	return s
}

func sha256ID(data []byte) string {
	sum := sha256.Sum256(data)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// canonicalID is the EventID of an item that carries none: the SHA-256 of
// prefix and the item's canonical JSON (keys sorted, no white space,
// numbers as written), so that a retried item gets the same ID.
func canonicalID(prefix string, data []byte) string {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return sha256ID(append([]byte(prefix), data...))
	}
	canon, err := json.Marshal(v)
	if err != nil {
		return sha256ID(append([]byte(prefix), data...))
	}
	return sha256ID(append([]byte(prefix), canon...))
}

// composedID joins parts into an event ID, hashed when too long.
func composedID(parts ...string) string {
	return cleanEventID(strings.Join(parts, "/"))
}

// parseRFC3339 parses an RFC 3339 time and checks it against now.
func parseRFC3339(field, s string, now time.Time) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: %s is not an RFC 3339 time", field, quoteShort(s))
	}
	return checkItemTime(field, t.UTC(), now)
}

// unixNanoTime is n nanoseconds after the Unix epoch, checked against now.
func unixNanoTime(field string, n int64, now time.Time) (time.Time, error) {
	if n <= 0 {
		return time.Time{}, fmt.Errorf("%s: %d is not a time after 1970", field, n)
	}
	return checkItemTime(field, time.Unix(0, n).UTC(), now)
}

func checkItemTime(field string, t, now time.Time) (time.Time, error) {
	if t.IsZero() || t.Year() < 1970 {
		return time.Time{}, fmt.Errorf("%s: %s is before 1970", field, t.Format(time.RFC3339Nano))
	}
	if ahead := t.Sub(now); ahead > MaxFutureSkew {
		return time.Time{}, fmt.Errorf("%s: %s is %s in the future (more than %s)", field, t.Format(time.RFC3339Nano), ahead.Round(time.Second), MaxFutureSkew)
	}
	return t, nil
}

// parseDestIP parses a destination address: IPv4-mapped IPv6 addresses
// become IPv4, zones are dropped.
func parseDestIP(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: %s is not an IP address", field, quoteShort(s))
	}
	return a.Unmap().WithZone(""), nil
}

func checkDestPort(field string, p int64) (int, error) {
	if p < 1 || p > 65535 {
		return 0, fmt.Errorf("%s: %d is not a port (1..65535)", field, p)
	}
	return int(p), nil
}

func checkItemPID(field string, p int64) (int, error) {
	if p < 0 || p > limPID {
		return 0, fmt.Errorf("%s: %d is not a process ID (0..%d)", field, p, limPID)
	}
	return int(p), nil
}

// normImageID returns a Docker image ID as "sha256:<64 hex>"; a bare 64-hex
// ID (old Docker) gets the prefix.
func normImageID(s string) (string, bool) {
	s = strings.TrimSpace(s)
	hexPart := strings.TrimPrefix(s, "sha256:")
	if len(hexPart) != 64 {
		return "", false
	}
	for i := 0; i < len(hexPart); i++ {
		if c := hexPart[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", false
		}
	}
	return "sha256:" + hexPart, true
}

// cleanTags keeps at most limTags non-empty tags; a tag longer than limRef
// is dropped rather than cut, so that it cannot match another.
func cleanTags(in []string) []string {
	var out []string
	for _, t := range in {
		if len(out) == limTags {
			break
		}
		if len(t) > limRef {
			continue
		}
		if t = cleanText(t, limRef); t != "" {
			out = append(out, t)
		}
	}
	return out
}

// cleanStrings cleans each string, drops empty ones and keeps at most n.
func cleanStrings(in []string, each, n int, clean func(string, int) string) []string {
	var out []string
	for _, s := range in {
		if len(out) == n {
			break
		}
		if s = clean(s, each); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// pathBase is the last element of a path, "" for an empty path.
func pathBase(p string) string {
	p = strings.TrimRight(p, "/")
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		p = p[i+1:]
	}
	return p
}

// quoteShort quotes s for a message, cut to 64 bytes.
func quoteShort(s string) string {
	const n = 64
	if len(s) > n {
		return strconv.Quote(cleanText(s, n)) + "…"
	}
	return strconv.Quote(s)
}

// rawInt reads an optional integer field: a JSON number, or a string of
// digits as some forwarders write them; absent, null or "" is not set.
func rawInt(field string, raw json.RawMessage) (v int64, set bool, err error) {
	if len(raw) == 0 {
		return 0, false, nil
	}
	v, set, err = jsonIntValue(raw)
	if err != nil {
		return 0, false, fmt.Errorf("%s: %v", field, err)
	}
	return v, set, nil
}

// jsonIntValue reads an integer from a JSON number or a string of digits.
func jsonIntValue(data []byte) (v int64, set bool, err error) {
	s := string(bytes.TrimSpace(data))
	switch {
	case s == "null":
		return 0, false, nil
	case strings.HasPrefix(s, `"`):
		if err := json.Unmarshal(data, &s); err != nil {
			return 0, false, errors.New("want an integer")
		}
		s = strings.TrimSpace(s)
		if s == "" || s == "<NA>" {
			return 0, false, nil
		}
	}
	v, err = strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("want an integer, got %s", quoteShort(s))
	}
	return v, true, nil
}
