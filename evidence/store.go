package evidence

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	jsonv2 "github.com/go-json-experiment/json"
)

// Store keeps node evidence and decision records. Implementations are safe
// for concurrent use. OpenSQLite and OpenPostgres return the two there are;
// docs/store.md describes the schema, retention and durability.
//
// Times are kept at microsecond precision (truncated) and returned in UTC.
// A build's place in "newest first" order and in retention is its Finished
// time, else its Started time, else the time it was stored.
type Store interface {
	// AddReport stores a report's builds and connections in one transaction; items already stored
	// (same Node, Source and EventID) are skipped and not counted. It returns how many were new.
	// A build or connection without a Node or Reporter takes the report's. An item the store
	// cannot keep makes AddReport store nothing and return an *InvalidError naming it.
	//
	// Items are keyed by node: another node's item with the same Source and EventID is another
	// item, so that no node can take an event ID another node will report.
	AddReport(ctx context.Context, r Report) (builds, conns int, err error)
	// BuildsByImageID returns builds of the image whose config digest is imageID, at most
	// MaxBuildsPerNode of each node and DefaultLimit in all, in node-fair order: the newest
	// build of every node first (newest first), then every node's second newest, and so on.
	// However many builds one node reports, they cannot push another node's out of the first
	// places.
	BuildsByImageID(ctx context.Context, imageID string) ([]Build, error)
	// BuildsByTag returns builds that tagged tag (e.g. "registry/repo:1.4") in the same
	// node-fair order, at most limit. Tags match exactly. A limit of 0 or less means
	// DefaultLimit.
	BuildsByTag(ctx context.Context, tag string, limit int) ([]Build, error)
	// Connections returns the connections a node reported in [from, to], oldest first, at most limit.
	// A limit of 0 or less means DefaultLimit.
	Connections(ctx context.Context, node string, from, to time.Time, limit int) ([]Connection, error)
	// AddDecision records an admission decision; idempotent on Decision.ID:
	// a decision whose ID is already stored is left as it is.
	AddDecision(ctx context.Context, d Decision) error
	// AddDecisions records decisions in one transaction (one durable commit), each as
	// AddDecision would; a decision whose ID is stored already, or earlier in ds, is left
	// as it is. A decision the store cannot keep makes it store none of them and return an
	// *InvalidError whose Index is that decision's position in ds.
	AddDecisions(ctx context.Context, ds []Decision) error
	// Decisions lists decisions matching q, newest first.
	Decisions(ctx context.Context, q DecisionQuery) ([]Decision, error)
	// Decision returns one decision by ID (ErrNotFound if none).
	Decision(ctx context.Context, id string) (Decision, error)
	// Prune deletes evidence and decisions older than before, then the oldest rows beyond maxRows
	// per table (0 = no cap); it returns how many rows it deleted. Builds, connections and
	// decisions are counted and capped; a build's tags and a decision's rule and image index
	// rows go with their parent and are not counted.
	Prune(ctx context.Context, before time.Time, maxRows int) (int, error)
	Close() error
}

// DefaultLimit is the number of rows BuildsByTag and Connections return when
// asked for a limit of 0 or less.
const DefaultLimit = 1000

// MaxBuildsPerNode is the most builds of one node that BuildsByImageID and
// BuildsByTag return: the node's newest.
const MaxBuildsPerNode = 4

// Decision is a recorded admission decision.
type Decision struct {
	ID        string // request UID (+ a suffix for audit-scan records); unique
	Time      time.Time
	Operation string
	Namespace string
	Kind      string
	Name      string
	User      string
	Groups    []string
	Mode      string
	Verdict   string   // allow | warn | deny | would-deny
	Rules     []string // rule IDs found
	// Images holds the per-image verdicts with findings and evidence, as the
	// webhook marshals them: a JSON array of objects. The "image" and
	// "digest" strings of each element are indexed for DecisionQuery.ImageGlob.
	Images     json.RawMessage
	Exceptions []string
}

// DecisionQuery selects decisions. Zero fields do not filter.
type DecisionQuery struct {
	// Since keeps decisions at or after this time.
	Since time.Time
	// Namespace keeps decisions in this namespace.
	Namespace string
	// Rule keeps decisions that found this rule ID.
	Rule string
	// ImageGlob keeps decisions with an image reference or digest that
	// matches it, ignoring ASCII case: "*" matches any run of characters,
	// "/" and ":" included, "?" any one character, and every other character
	// itself. It is translated to SQL LIKE, so "ghcr.io/acme/*" matches
	// "ghcr.io/acme/team/app:1.4" and "sha256:9f2c*" a digest. A glob
	// without "*" or "?" matches the whole reference exactly.
	ImageGlob string
	// Verdicts keeps decisions with one of these verdicts.
	Verdicts []string
	// Limit is the most decisions returned. The default is 100 and values
	// above 1000 mean 1000.
	Limit int
}

const (
	defaultDecisionLimit = 100
	maxDecisionLimit     = 1000
)

// ErrNotFound is returned (wrapped) when a looked-up record does not exist;
// check it with errors.Is.
var ErrNotFound = errors.New("evidence: not found")

// InvalidError reports an item the store refuses to keep: the caller's
// fault, not the store's. AddReport and AddDecision store nothing when they
// return one.
type InvalidError struct {
	// Item is "build", "connection" or "decision".
	Item string
	// Index is the item's position in Report.Builds or Report.Connections;
	// -1 for a decision.
	Index int
	// Field is the offending field, as named in the Go type.
	Field  string
	Reason string
}

func (e *InvalidError) Error() string {
	if e.Index >= 0 {
		return fmt.Sprintf("evidence: %s %d: %s %s", e.Item, e.Index, e.Field, e.Reason)
	}
	return fmt.Sprintf("evidence: %s: %s %s", e.Item, e.Field, e.Reason)
}

// Error is a failure of the database behind a Store: which backend, in which
// operation, and why. Every error a Store returns is an *Error except
// ErrNotFound and *InvalidError; context cancellation shows through Unwrap.
type Error struct {
	Backend string // "sqlite" or "postgres"
	Op      string // the Store method, "open" or "migrate"
	Err     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("evidence: %s %s: %v", e.Backend, e.Op, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// MigrationError is the cause, inside an *Error, of a schema migration that
// could not be applied.
type MigrationError struct {
	Version int
	Name    string
	Err     error
}

func (e *MigrationError) Error() string {
	return fmt.Sprintf("migration %04d_%s: %v", e.Version, e.Name, e.Err)
}

func (e *MigrationError) Unwrap() error { return e.Err }

// microTime truncates t to the microsecond, the precision both backends keep.
func microTime(t time.Time) time.Time { return t.Truncate(time.Microsecond) }

// unixMicro is t in microseconds since the Unix epoch, 0 for the zero time
// (never a real build or connection time).
func unixMicro(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromUnixMicro(us int64) time.Time {
	if us == 0 {
		return time.Time{}
	}
	return time.UnixMicro(us).UTC()
}

// buildTime is the time a build is ordered and pruned by.
func buildTime(b Build, now time.Time) time.Time {
	switch {
	case !b.Finished.IsZero():
		return b.Finished
	case !b.Started.IsZero():
		return b.Started
	}
	return now
}

// prepared is a report checked and ready to insert: items without a Node
// or Reporter given the report's, duplicates within the report dropped,
// sorted by (Node, Source, EventID) so that concurrent writers lock rows
// in one order.
type prepared struct {
	builds []Build
	conns  []Connection
}

func prepareReport(r Report) (prepared, error) {
	var p prepared
	seen := make(map[[3]string]bool)
	for i, b := range r.Builds {
		if b.Node == "" {
			b.Node = r.Node
		}
		if b.Reporter == "" {
			b.Reporter = r.Reporter
		}
		if err := checkBuild(i, b); err != nil {
			return prepared{}, err
		}
		k := [3]string{b.Node, b.Source, b.EventID}
		if seen[k] {
			continue
		}
		seen[k] = true
		p.builds = append(p.builds, b)
	}
	clear(seen)
	for i, c := range r.Connections {
		if c.Node == "" {
			c.Node = r.Node
		}
		if c.Reporter == "" {
			c.Reporter = r.Reporter
		}
		if err := checkConnection(i, c); err != nil {
			return prepared{}, err
		}
		k := [3]string{c.Node, c.Source, c.EventID}
		if seen[k] {
			continue
		}
		seen[k] = true
		p.conns = append(p.conns, c)
	}
	slices.SortFunc(p.builds, func(a, b Build) int {
		return cmpKey(a.Node, a.Source, a.EventID, b.Node, b.Source, b.EventID)
	})
	slices.SortFunc(p.conns, func(a, b Connection) int {
		return cmpKey(a.Node, a.Source, a.EventID, b.Node, b.Source, b.EventID)
	})
	return p, nil
}

func cmpKey(n1, s1, e1, n2, s2, e2 string) int {
	if c := strings.Compare(n1, n2); c != 0 {
		return c
	}
	if c := strings.Compare(s1, s2); c != 0 {
		return c
	}
	return strings.Compare(e1, e2)
}

// checkText rejects what PostgreSQL cannot store in a text column, so that
// both backends accept the same input.
func checkText(s string) string {
	if !utf8.ValidString(s) {
		return "is not valid UTF-8"
	}
	if strings.ContainsRune(s, 0) {
		return "contains a NUL byte"
	}
	return ""
}

// maxPID bounds process IDs: Linux's is 2^22, PostgreSQL's integer 2^31-1.
const maxPID = 1<<31 - 1

func checkBuild(i int, b Build) error {
	bad := func(field, reason string) error {
		return &InvalidError{Item: "build", Index: i, Field: field, Reason: reason}
	}
	if b.Source == "" {
		return bad("Source", "is empty")
	}
	if b.EventID == "" {
		return bad("EventID", "is empty")
	}
	if b.Node == "" {
		return bad("Node", "is empty (and so is the report's)")
	}
	for _, f := range []struct{ name, v string }{
		{"Source", b.Source}, {"EventID", b.EventID}, {"Node", b.Node}, {"Reporter", b.Reporter}, {"Tool", b.Tool},
		{"ImageID", b.ImageID}, {"CgroupID", b.CgroupID},
	} {
		if r := checkText(f.v); r != "" {
			return bad(f.name, r)
		}
	}
	for _, l := range []struct {
		name string
		v    []string
	}{{"Tags", b.Tags}, {"ContainerIDs", b.ContainerIDs}, {"Steps", b.Steps}} {
		for _, s := range l.v {
			if r := checkText(s); r != "" {
				return bad(l.name, r)
			}
		}
	}
	for _, tag := range b.Tags {
		if tag == "" {
			return bad("Tags", "has an empty tag")
		}
	}
	for _, pid := range b.PIDs {
		if pid < 0 || pid > maxPID {
			return bad("PIDs", fmt.Sprintf("has %d, outside [0, %d]", pid, maxPID))
		}
	}
	return nil
}

func checkConnection(i int, c Connection) error {
	bad := func(field, reason string) error {
		return &InvalidError{Item: "connection", Index: i, Field: field, Reason: reason}
	}
	if c.Source == "" {
		return bad("Source", "is empty")
	}
	if c.EventID == "" {
		return bad("EventID", "is empty")
	}
	if c.Node == "" {
		return bad("Node", "is empty (and so is the report's)")
	}
	if c.Time.IsZero() {
		return bad("Time", "is zero")
	}
	if c.DestIP.Zone() != "" {
		return bad("DestIP", "has a zone")
	}
	if c.DestPort < 0 || c.DestPort > 65535 {
		return bad("DestPort", fmt.Sprintf("is %d, outside [0, 65535]", c.DestPort))
	}
	if c.PID < 0 || c.PID > maxPID {
		return bad("PID", fmt.Sprintf("is %d, outside [0, %d]", c.PID, maxPID))
	}
	for _, f := range []struct{ name, v string }{
		{"Source", c.Source}, {"EventID", c.EventID}, {"Node", c.Node}, {"Reporter", c.Reporter}, {"Process", c.Process},
		{"Cmdline", c.Cmdline}, {"ContainerID", c.ContainerID}, {"CgroupID", c.CgroupID},
		{"DestName", c.DestName},
	} {
		if r := checkText(f.v); r != "" {
			return bad(f.name, r)
		}
	}
	return nil
}

// checkDecision checks the decision at index i of a batch (-1 for a
// single one) and returns its image references.
func checkDecision(i int, d Decision) ([]string, error) {
	bad := func(field, reason string) error {
		return &InvalidError{Item: "decision", Index: i, Field: field, Reason: reason}
	}
	if d.ID == "" {
		return nil, bad("ID", "is empty")
	}
	if d.Time.IsZero() {
		return nil, bad("Time", "is zero")
	}
	for _, f := range []struct{ name, v string }{
		{"ID", d.ID}, {"Operation", d.Operation}, {"Namespace", d.Namespace}, {"Kind", d.Kind},
		{"Name", d.Name}, {"User", d.User}, {"Mode", d.Mode}, {"Verdict", d.Verdict},
	} {
		if r := checkText(f.v); r != "" {
			return nil, bad(f.name, r)
		}
	}
	for _, l := range []struct {
		name string
		v    []string
	}{{"Groups", d.Groups}, {"Rules", d.Rules}, {"Exceptions", d.Exceptions}} {
		for _, s := range l.v {
			if r := checkText(s); r != "" {
				return nil, bad(l.name, r)
			}
		}
	}
	if len(d.Images) == 0 {
		return nil, nil
	}
	if !utf8.Valid(d.Images) {
		return nil, bad("Images", "is not valid UTF-8")
	}
	refs, valid := imageRefs(d.Images)
	if !valid {
		return nil, bad("Images", "is not valid JSON")
	}
	if strings.Contains(string(d.Images), `\u0000`) {
		return nil, bad("Images", "contains a NUL character")
	}
	return refs, nil
}

// imageRefs returns the lower-cased "image" and "digest" strings of the
// objects in a JSON array, deduplicated: what DecisionQuery.ImageGlob
// matches. Anything else in raw is kept but not indexed. valid reports
// whether raw is JSON at all.
func imageRefs(raw json.RawMessage) (refs []string, valid bool) {
	// The records the webhook writes decode as imageKeys, with
	// go-json-experiment/json (names matched exactly, as the map below
	// does) in a third of the time of a map per element, and that
	// validates them too; anything else (a non-string "image", say) is
	// read the slow way.
	var typed []imageKeys
	if jsonv2.Unmarshal(raw, &typed) == nil {
		for _, e := range typed {
			refs = appendRef(appendRef(refs, e.Image), e.Digest)
		}
		return refs, true
	}
	if !json.Valid(raw) {
		return nil, false
	}
	var elems []map[string]json.RawMessage
	if json.Unmarshal(raw, &elems) != nil {
		return nil, true
	}
	for _, e := range elems {
		for _, key := range []string{"image", "digest"} {
			var s string
			if v, ok := e[key]; ok && json.Unmarshal(v, &s) == nil {
				refs = appendRef(refs, s)
			}
		}
	}
	return refs, true
}

// imageKeys are the indexed members of an element of Decision.Images.
type imageKeys struct {
	Image  string `json:"image"`
	Digest string `json:"digest"`
}

func appendRef(refs []string, s string) []string {
	if s == "" {
		return refs
	}
	s = strings.ToLower(s)
	if slices.Contains(refs, s) {
		return refs
	}
	return append(refs, s)
}

// preparedDecision is a decision checked and ready to insert, with the
// image references its index rows hold.
type preparedDecision struct {
	Decision
	refs []string
}

// prepareDecisions checks ds, drops repeated IDs (the first is kept, as
// if they were added one by one), and sorts them by ID so that concurrent
// writers lock rows in one order.
func prepareDecisions(ds []Decision) ([]preparedDecision, error) {
	out := make([]preparedDecision, 0, len(ds))
	seen := make(map[string]bool, len(ds))
	for i, d := range ds {
		refs, err := checkDecision(i, d)
		if err != nil {
			return nil, err
		}
		if seen[d.ID] {
			continue
		}
		seen[d.ID] = true
		out = append(out, preparedDecision{Decision: d, refs: refs})
	}
	slices.SortFunc(out, func(a, b preparedDecision) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// likePattern translates an ImageGlob to a lower-cased SQL LIKE pattern
// with "\" as its escape character.
func likePattern(glob string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(glob) {
		switch r {
		case '*':
			b.WriteByte('%')
		case '?':
			b.WriteByte('_')
		case '%', '_', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func limitOr(limit, def int) int {
	if limit <= 0 {
		return def
	}
	return limit
}

func decisionLimit(n int) int {
	switch {
	case n <= 0:
		return defaultDecisionLimit
	case n > maxDecisionLimit:
		return maxDecisionLimit
	}
	return n
}

// dialect is what differs between the SQL of the two backends in the
// queries they share.
type dialect struct {
	placeholder func(n int) string // the n-th (1-based) bind parameter
	timeArg     func(time.Time) any
}

// decisionsSQL builds the query behind Store.Decisions.
func decisionsSQL(q DecisionQuery, d dialect) (string, []any) {
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return d.placeholder(len(args))
	}
	if !q.Since.IsZero() {
		where = append(where, "d.time >= "+arg(d.timeArg(microTime(q.Since))))
	}
	if q.Namespace != "" {
		where = append(where, "d.namespace = "+arg(q.Namespace))
	}
	if q.Rule != "" {
		where = append(where, "EXISTS (SELECT 1 FROM decision_rules r WHERE r.decision_id = d.id AND r.rule = "+arg(q.Rule)+")")
	}
	if q.ImageGlob != "" {
		where = append(where, "EXISTS (SELECT 1 FROM decision_images i WHERE i.decision_id = d.id AND i.image LIKE "+
			arg(likePattern(q.ImageGlob))+` ESCAPE '\')`)
	}
	if len(q.Verdicts) > 0 {
		var ps []string
		for _, v := range q.Verdicts {
			ps = append(ps, arg(v))
		}
		where = append(where, "d.verdict IN ("+strings.Join(ps, ", ")+")")
	}
	s := "SELECT " + decisionColumns + " FROM decisions d"
	if len(where) > 0 {
		s += " WHERE " + strings.Join(where, " AND ")
	}
	s += " ORDER BY d.time DESC, d.id DESC LIMIT " + arg(decisionLimit(q.Limit))
	return s, args
}

const decisionColumns = "d.id, d.time, d.operation, d.namespace, d.kind, d.name, d.username, d.user_groups, d.mode, d.verdict, d.rules, d.images, d.exceptions"

// jsonList encodes a string or int list for a JSON column; nil stays NULL.
func jsonList[T any](v []T) any {
	if v == nil {
		return nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // []string and []int always marshal
	}
	return string(b)
}

// parseList decodes a JSON column written by jsonList.
func parseList[T any](s *string, field string) ([]T, error) {
	if s == nil {
		return nil, nil
	}
	var v []T
	if err := json.Unmarshal([]byte(*s), &v); err != nil {
		return nil, fmt.Errorf("column %s: %w", field, err)
	}
	return v, nil
}

// parseAddr decodes a dest_ip column; NULL is the zero Addr.
func parseAddr(s *string) (netip.Addr, error) {
	if s == nil || *s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(*s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("column dest_ip: %w", err)
	}
	return a, nil
}

func addrArg(a netip.Addr) any {
	if !a.IsValid() {
		return nil
	}
	return a.String()
}

func nullString(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func derefString(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// pruneBatch is how many rows Prune deletes per transaction, so that a
// large prune does not hold the write lock for long.
const pruneBatch = 5000

// pruned tables: the name, its time column and its key column.
var prunedTables = []struct{ table, timeCol, keyCol string }{
	{"builds", "at", "id"},
	{"connections", "time", "id"},
	{"decisions", "time", "id"},
}

// scanner is a row of *sql.Rows, *sql.Row, pgx.Rows or pgx.Row.
type scanner interface{ Scan(dest ...any) error }

const buildColumns = "b.source, b.event_id, b.node, b.reporter, b.tool, b.image_id, b.started, b.finished, b.pids, b.container_ids, b.cgroup_id, b.steps, b.tags"

// scanBuild reads buildColumns; T is how the backend returns a time column.
func scanBuild[T any](sc scanner, toTime func(*T) time.Time) (Build, error) {
	var (
		b                               Build
		started, finished               *T
		pids, containerIDs, steps, tags *string
	)
	if err := sc.Scan(&b.Source, &b.EventID, &b.Node, &b.Reporter, &b.Tool, &b.ImageID, &started, &finished,
		&pids, &containerIDs, &b.CgroupID, &steps, &tags); err != nil {
		return Build{}, err
	}
	b.Started, b.Finished = toTime(started), toTime(finished)
	var err error
	if b.PIDs, err = parseList[int](pids, "pids"); err != nil {
		return Build{}, err
	}
	if b.ContainerIDs, err = parseList[string](containerIDs, "container_ids"); err != nil {
		return Build{}, err
	}
	if b.Steps, err = parseList[string](steps, "steps"); err != nil {
		return Build{}, err
	}
	if b.Tags, err = parseList[string](tags, "tags"); err != nil {
		return Build{}, err
	}
	return b, nil
}

// scanConnection reads the backend's connection columns: source, event_id,
// node, reporter, time, process, pid, cmdline, container_id, cgroup_id, dest_ip (as
// text), dest_port, dest_name.
func scanConnection[T any](sc scanner, toTime func(*T) time.Time) (Connection, error) {
	var (
		c    Connection
		t    *T
		dest *string
	)
	if err := sc.Scan(&c.Source, &c.EventID, &c.Node, &c.Reporter, &t, &c.Process, &c.PID, &c.Cmdline, &c.ContainerID,
		&c.CgroupID, &dest, &c.DestPort, &c.DestName); err != nil {
		return Connection{}, err
	}
	c.Time = toTime(t)
	var err error
	if c.DestIP, err = parseAddr(dest); err != nil {
		return Connection{}, err
	}
	return c, nil
}

// scanDecision reads decisionColumns.
func scanDecision[T any](sc scanner, toTime func(*T) time.Time) (Decision, error) {
	var (
		d                         Decision
		t                         *T
		groups, rules, exceptions *string
		images                    *string
	)
	if err := sc.Scan(&d.ID, &t, &d.Operation, &d.Namespace, &d.Kind, &d.Name, &d.User, &groups, &d.Mode,
		&d.Verdict, &rules, &images, &exceptions); err != nil {
		return Decision{}, err
	}
	d.Time = toTime(t)
	var err error
	if d.Groups, err = parseList[string](groups, "user_groups"); err != nil {
		return Decision{}, err
	}
	if d.Rules, err = parseList[string](rules, "rules"); err != nil {
		return Decision{}, err
	}
	if d.Exceptions, err = parseList[string](exceptions, "exceptions"); err != nil {
		return Decision{}, err
	}
	if images != nil {
		d.Images = json.RawMessage(*images)
	}
	return d, nil
}

// rawArg is a JSON column's value: NULL when empty.
func rawArg(raw json.RawMessage) any {
	if len(raw) == 0 {
		return nil
	}
	return string(raw)
}

// pruneRunner runs Prune's statements, each in its own transaction.
type pruneRunner interface {
	execCount(ctx context.Context, q string, args ...any) (int64, error)
	// queryPair scans a row of two columns as the driver returns them;
	// ok is false when there is no row.
	queryPair(ctx context.Context, q string, args ...any) (a, b any, ok bool, err error)
}

// prune is Store.Prune on either backend: by age, then by count, each in
// batches of pruneBatch rows.
func prune(ctx context.Context, r pruneRunner, d dialect, before time.Time, maxRows int) (int, error) {
	total := 0
	drain := func(q string, args ...any) error {
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			n, err := r.execCount(ctx, q, args...)
			total += int(n)
			if err != nil {
				return err
			}
			if n < pruneBatch {
				return nil
			}
		}
	}
	p := d.placeholder
	for _, t := range prunedTables {
		if !before.IsZero() {
			q := fmt.Sprintf("DELETE FROM %[1]s WHERE %[3]s IN (SELECT %[3]s FROM %[1]s WHERE %[2]s < %[4]s LIMIT %[5]d)",
				t.table, t.timeCol, t.keyCol, p(1), pruneBatch)
			if err := drain(q, d.timeArg(microTime(before))); err != nil {
				return total, err
			}
		}
		if maxRows <= 0 {
			continue
		}
		// The newest row past the cap, and every row older than it, go.
		tm, key, ok, err := r.queryPair(ctx, fmt.Sprintf("SELECT %[2]s, %[3]s FROM %[1]s ORDER BY %[2]s DESC, %[3]s DESC LIMIT 1 OFFSET %[4]s",
			t.table, t.timeCol, t.keyCol, p(1)), maxRows)
		if err != nil {
			return total, err
		}
		if !ok {
			continue
		}
		q := fmt.Sprintf("DELETE FROM %[1]s WHERE %[3]s IN (SELECT %[3]s FROM %[1]s WHERE %[2]s < %[4]s OR (%[2]s = %[4]s AND %[3]s <= %[5]s) LIMIT %[6]d)",
			t.table, t.timeCol, t.keyCol, p(1), p(2), pruneBatch)
		if err := drain(q, tm, key); err != nil {
			return total, err
		}
	}
	return total, nil
}

// Compile-time checks that both backends implement Store.
var (
	_ Store = (*SQLite)(nil)
	_ Store = (*Postgres)(nil)
)
