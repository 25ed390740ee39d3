package evidence

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" database/sql driver, pure Go
)

// SQLite is the embedded Store: one database file, in WAL mode, written by
// one connection and read by a small pool. Several processes may open the
// same file (SQLite's locks serialise their writes); it does not suit
// several replicas on different machines: use Postgres for that.
type SQLite struct {
	w   *sql.DB // a single connection: every write, in BEGIN IMMEDIATE transactions
	r   *sql.DB // read-only connections
	now func() time.Time

	insBuild, insTag, insConn           *sql.Stmt  // on w
	insDecision                         *sql.Stmt  // on w
	insRule, insImage                   rowsInsert // on w
	byImage, byTag, conns, decisionByID *sql.Stmt  // on r

	reports *reportWriter // AddReport's group commit
}

// SQLite settings. busy_timeout is how long a connection waits for another
// process's lock before it gives up with SQLITE_BUSY.
const (
	sqliteBusyTimeout = 10 * time.Second
	sqliteReaders     = 4
	// Page cache sizes, in KiB: the writer's keeps the indexes' hot pages
	// (each connection has its own cache).
	sqliteWriterCacheKiB = 32 << 10
	sqliteReaderCacheKiB = 8 << 10
)

// OpenSQLite opens or creates the database file at path and brings its
// schema up to date. A new file is created readable by its owner only.
//
// Writes are durable when AddReport or AddDecision(s) returns: the file is in
// WAL mode with synchronous=FULL, so every commit is fsynced to the WAL
// before it is acknowledged and survives a crash of the process, the
// kernel or the machine (NORMAL, SQLite's usual WAL setting, survives a
// process crash but may lose the last commits on power loss).
func OpenSQLite(ctx context.Context, path string) (*SQLite, error) {
	fail := func(err error) (*SQLite, error) { return nil, &Error{Backend: "sqlite", Op: "open", Err: err} }
	switch {
	case path == "":
		return fail(errors.New("empty path"))
	case path == ":memory:" || strings.HasPrefix(path, "file:"):
		return fail(fmt.Errorf("path %q: want a file name, not a URI or :memory:", path))
	case strings.Contains(path, "?"):
		return fail(fmt.Errorf("path %q contains a ?", path))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fail(err)
	}
	f.Close()

	pragmas := func(p ...string) string {
		q := url.Values{"_pragma": p}
		return path + "?" + q.Encode()
	}
	busy := fmt.Sprintf("busy_timeout(%d)", sqliteBusyTimeout.Milliseconds())
	// temp_store(MEMORY): a multi-row INSERT (rowsInsert) keeps a
	// statement journal of the pages it changes, in case a constraint
	// undoes it; on disk that was two pwrite system calls per page, 7%
	// of the CPU of serve with a SQLite store under load. It holds a
	// batch's pages at most, and the commit's durability does not rest on it.
	w, err := sql.Open("sqlite", pragmas(busy, "foreign_keys(1)", "journal_mode(WAL)", "synchronous(FULL)", "temp_store(MEMORY)",
		fmt.Sprintf("cache_size(-%d)", sqliteWriterCacheKiB))+"&_txlock=immediate")
	if err != nil {
		return fail(err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	r, err := sql.Open("sqlite", pragmas(busy, "foreign_keys(1)", "query_only(1)",
		fmt.Sprintf("cache_size(-%d)", sqliteReaderCacheKiB)))
	if err != nil {
		w.Close()
		return fail(err)
	}
	r.SetMaxOpenConns(sqliteReaders)
	r.SetMaxIdleConns(sqliteReaders)
	r.SetConnMaxLifetime(0)
	r.SetConnMaxIdleTime(0)
	s := &SQLite{w: w, r: r, now: time.Now}
	// The writer's first connection switches the file to WAL before any
	// reader opens it.
	if err := pingBusy(ctx, w); err != nil {
		s.Close()
		return fail(err)
	}
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, &Error{Backend: "sqlite", Op: "migrate", Err: err}
	}
	if err := s.prepare(ctx); err != nil {
		s.Close()
		return fail(err)
	}
	s.reports = newReportWriter(s.addReports)
	return s, nil
}

func (s *SQLite) migrate(ctx context.Context) error {
	ms, err := loadMigrations(migrationFiles, "migrations/sqlite")
	if err != nil {
		return err
	}
	for _, m := range ms {
		if err := s.apply(ctx, m); err != nil {
			return &MigrationError{Version: m.version, Name: m.name, Err: err}
		}
	}
	return nil
}

// apply runs m unless it has been: BEGIN IMMEDIATE takes the write lock
// first, so a second process opening the same file waits and then sees the
// migration recorded.
func (s *SQLite) apply(ctx context.Context, m migration) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, createMigrationsTable); err != nil {
		return err
	}
	var n int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM schema_migrations WHERE version = ?", m.version).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	if _, err := tx.ExecContext(ctx, m.sql); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
		m.version, m.name, s.now().UnixMicro()); err != nil {
		return err
	}
	return tx.Commit()
}

// sqliteBuildsByImageID and sqliteBuildsByTag find the nodes that built
// an image or tagged a tag by skipping through the index from one node to
// the next (a loose index scan: one probe per node, however many builds a
// node has), take each node's newest builds by rowid (CROSS JOIN keeps
// the nodes the outer loop), and order them node-fairly. Parameters: the image ID or tag, the most nodes, the most
// builds per node, the most builds.
const (
	sqliteBuildsByImageID = `WITH RECURSIVE nodes(node, n) AS (
	SELECT (SELECT node FROM builds WHERE image_id = ?1 ORDER BY node LIMIT 1), 1
	UNION ALL
	SELECT (SELECT x.node FROM builds x WHERE x.image_id = ?1 AND x.node > nodes.node ORDER BY x.node LIMIT 1), nodes.n + 1
	FROM nodes WHERE nodes.node IS NOT NULL AND nodes.n < ?2
), picked AS (
	SELECT b.*, row_number() OVER (PARTITION BY b.node ORDER BY b.at DESC, b.id DESC) AS rank
	FROM nodes CROSS JOIN builds b ON b.id IN (
		SELECT x.id FROM builds x WHERE x.image_id = ?1 AND x.node = nodes.node ORDER BY x.at DESC, x.id DESC LIMIT ?3)
	WHERE nodes.node IS NOT NULL
)
SELECT ` + buildColumns + ` FROM picked b ORDER BY b.rank, b.at DESC, b.id DESC LIMIT ?4`

	sqliteBuildsByTag = `WITH RECURSIVE nodes(node, n) AS (
	SELECT (SELECT node FROM build_tags WHERE tag = ?1 ORDER BY node LIMIT 1), 1
	UNION ALL
	SELECT (SELECT x.node FROM build_tags x WHERE x.tag = ?1 AND x.node > nodes.node ORDER BY x.node LIMIT 1), nodes.n + 1
	FROM nodes WHERE nodes.node IS NOT NULL AND nodes.n < ?2
), picked AS (
	SELECT b.*, row_number() OVER (PARTITION BY b.node ORDER BY b.at DESC, b.id DESC) AS rank
	FROM nodes CROSS JOIN builds b ON b.id IN (
		SELECT x.build_id FROM build_tags x WHERE x.tag = ?1 AND x.node = nodes.node ORDER BY x.at DESC, x.build_id DESC LIMIT ?3)
	WHERE nodes.node IS NOT NULL
)
SELECT ` + buildColumns + ` FROM picked b ORDER BY b.rank, b.at DESC, b.id DESC LIMIT ?4`
)

const sqliteConnColumns = "c.source, c.event_id, c.node, c.reporter, c.time, c.process, c.pid, c.cmdline, c.container_id, c.cgroup_id, c.dest_ip, c.dest_port, c.dest_name"

func (s *SQLite) prepare(ctx context.Context) error {
	for _, p := range []struct {
		db   *sql.DB
		stmt **sql.Stmt
		sql  string
	}{
		{s.w, &s.insBuild, `INSERT INTO builds (source, event_id, node, reporter, tool, image_id, started, finished, at, pids, container_ids, cgroup_id, steps, tags)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node, source, event_id) DO NOTHING RETURNING id`},
		{s.w, &s.insTag, `INSERT INTO build_tags (build_id, tag, node, at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`},
		{s.w, &s.insConn, `INSERT INTO connections (source, event_id, node, reporter, time, process, pid, cmdline, container_id, cgroup_id, dest_ip, dest_port, dest_name)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node, source, event_id) DO NOTHING`},
		{s.w, &s.insDecision, `INSERT INTO decisions (id, time, operation, namespace, kind, name, username, user_groups, mode, verdict, rules, images, exceptions)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING`},
		{s.r, &s.byImage, sqliteBuildsByImageID},
		{s.r, &s.byTag, sqliteBuildsByTag},
		{s.r, &s.conns, "SELECT " + sqliteConnColumns + ` FROM connections c
			WHERE c.node = ? AND c.time >= ? AND c.time <= ? ORDER BY c.time, c.id LIMIT ?`},
		{s.r, &s.decisionByID, "SELECT " + decisionColumns + " FROM decisions d WHERE d.id = ?"},
	} {
		st, err := p.db.PrepareContext(ctx, p.sql)
		if err != nil {
			return fmt.Errorf("prepare %q: %w", p.sql, err)
		}
		*p.stmt = st
	}
	// The decision's time, verdict and namespace are in its rule and image
	// rows for the summaries (migration 0003).
	for _, p := range []struct {
		ins  *rowsInsert
		head string
	}{
		{&s.insRule, "INSERT INTO decision_rules (decision_id, rule, time, verdict, namespace) VALUES "},
		{&s.insImage, "INSERT INTO decision_images (decision_id, image, time, verdict, namespace) VALUES "},
	} {
		if err := p.ins.prepare(ctx, s.w, p.head, " ON CONFLICT DO NOTHING", 5); err != nil {
			return err
		}
	}
	return nil
}

// rowsInsert inserts rows of a batch with as few statements as it can:
// statements of 64, 16, 4 and 1 rows of bound values. The rules and images
// rows of a batch (two images rows per container) cost more than the
// decisions' own rows when each had a statement, and twice as much again
// when a batch went as one JSON array through json_each and json_extract.
type rowsInsert struct {
	stmts [len(rowsInsertSizes)]*sql.Stmt // by rowsInsertSizes
}

// rowsInsertSizes are the rows per statement of a rowsInsert, largest
// first; 64 rows of 5 columns stay far below SQLite's bound parameters.
var rowsInsertSizes = [...]int{64, 16, 4, 1}

func (ri *rowsInsert) prepare(ctx context.Context, db *sql.DB, head, tail string, cols int) error {
	row := "(" + strings.TrimSuffix(strings.Repeat("?, ", cols), ", ") + ")"
	for i, n := range rowsInsertSizes {
		q := head + strings.TrimSuffix(strings.Repeat(row+", ", n), ", ") + tail
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			return fmt.Errorf("prepare %q: %w", q, err)
		}
		ri.stmts[i] = st
	}
	return nil
}

// exec inserts rows (each of the prepared number of columns) in tx.
func (ri *rowsInsert) exec(ctx context.Context, tx *sql.Tx, rows [][]any) error {
	var args []any
	for len(rows) > 0 {
		i := 0
		for rowsInsertSizes[i] > len(rows) {
			i++
		}
		n := rowsInsertSizes[i]
		args = args[:0]
		for _, r := range rows[:n] {
			args = append(args, r...)
		}
		if _, err := tx.StmtContext(ctx, ri.stmts[i]).ExecContext(ctx, args...); err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

func (ri *rowsInsert) close() {
	for _, st := range ri.stmts {
		if st != nil {
			st.Close()
		}
	}
}

func (s *SQLite) fail(op string, err error) error {
	return &Error{Backend: "sqlite", Op: op, Err: err}
}

// AddReport implements Store. Reports that arrive together are committed
// together, in one transaction, each acknowledged once it is durable
// (see reportWriter).
func (s *SQLite) AddReport(ctx context.Context, r Report) (builds, conns int, err error) {
	p, err := prepareReport(r)
	if err != nil {
		return 0, 0, err
	}
	if len(p.builds) == 0 && len(p.conns) == 0 {
		return 0, 0, nil
	}
	builds, conns, err = s.reports.add(ctx, p)
	if err != nil {
		return 0, 0, s.fail("AddReport", err)
	}
	return builds, conns, nil
}

// addReports stores a group of reports in one transaction, counting each
// report's new items.
func (s *SQLite) addReports(ctx context.Context, group []*pendingReport) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	now := s.now()
	insBuild, insTag, insConn := tx.StmtContext(ctx, s.insBuild), tx.StmtContext(ctx, s.insTag), tx.StmtContext(ctx, s.insConn)
	for _, pr := range group {
		pr.builds, pr.conns = 0, 0
		for _, b := range pr.p.builds {
			at := unixMicro(buildTime(b, now))
			var id int64
			err := insBuild.QueryRowContext(ctx, b.Source, b.EventID, b.Node, b.Reporter, b.Tool, b.ImageID,
				microArg(b.Started), microArg(b.Finished), at,
				jsonList(b.PIDs), jsonList(b.ContainerIDs), b.CgroupID, jsonList(b.Steps), jsonList(b.Tags)).Scan(&id)
			if errors.Is(err, sql.ErrNoRows) {
				continue // stored before
			}
			if err != nil {
				return err
			}
			pr.builds++
			for _, tag := range b.Tags {
				if _, err := insTag.ExecContext(ctx, id, tag, b.Node, at); err != nil {
					return err
				}
			}
		}
		for _, c := range pr.p.conns {
			res, err := insConn.ExecContext(ctx, c.Source, c.EventID, c.Node, c.Reporter, unixMicro(c.Time), c.Process, c.PID,
				c.Cmdline, c.ContainerID, c.CgroupID, addrArg(c.DestIP), c.DestPort, c.DestName)
			if err != nil {
				return err
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			pr.conns += int(n)
		}
	}
	return tx.Commit()
}

// microArg is a nullable time column's value: NULL for the zero time.
func microArg(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t.UnixMicro()
}

func sqliteTime(us *int64) time.Time {
	if us == nil {
		return time.Time{}
	}
	return time.UnixMicro(*us).UTC()
}

// BuildsByImageID implements Store.
func (s *SQLite) BuildsByImageID(ctx context.Context, imageID string) ([]Build, error) {
	if imageID == "" {
		return nil, nil
	}
	bs, err := queryAll(ctx, s.byImage, func(sc scanner) (Build, error) { return scanBuild(sc, sqliteTime) },
		imageID, DefaultLimit, MaxBuildsPerNode, DefaultLimit)
	if err != nil {
		return nil, s.fail("BuildsByImageID", err)
	}
	return bs, nil
}

// BuildsByTag implements Store.
func (s *SQLite) BuildsByTag(ctx context.Context, tag string, limit int) ([]Build, error) {
	if tag == "" {
		return nil, nil
	}
	limit = limitOr(limit, DefaultLimit)
	bs, err := queryAll(ctx, s.byTag, func(sc scanner) (Build, error) { return scanBuild(sc, sqliteTime) },
		tag, DefaultLimit, MaxBuildsPerNode, limit)
	if err != nil {
		return nil, s.fail("BuildsByTag", err)
	}
	return bs, nil
}

// Connections implements Store.
func (s *SQLite) Connections(ctx context.Context, node string, from, to time.Time, limit int) ([]Connection, error) {
	if node == "" || to.Before(from) {
		return nil, nil
	}
	cs, err := queryAll(ctx, s.conns, func(sc scanner) (Connection, error) { return scanConnection(sc, sqliteTime) },
		node, microTime(from).UnixMicro(), microTime(to).UnixMicro(), limitOr(limit, DefaultLimit))
	if err != nil {
		return nil, s.fail("Connections", err)
	}
	return cs, nil
}

// AddDecision implements Store.
func (s *SQLite) AddDecision(ctx context.Context, d Decision) error {
	refs, err := checkDecision(-1, d)
	if err != nil {
		return err
	}
	if err := s.addDecisions(ctx, []preparedDecision{{Decision: d, refs: refs}}); err != nil {
		return s.fail("AddDecision", err)
	}
	return nil
}

// AddDecisions implements Store: one transaction, so one fsync of the
// WAL, however many decisions.
func (s *SQLite) AddDecisions(ctx context.Context, ds []Decision) error {
	pds, err := prepareDecisions(ds)
	if err != nil {
		return err
	}
	if len(pds) == 0 {
		return nil
	}
	if err := s.addDecisions(ctx, pds); err != nil {
		return s.fail("AddDecisions", err)
	}
	return nil
}

func (s *SQLite) addDecisions(ctx context.Context, pds []preparedDecision) error {
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	insDecision := tx.StmtContext(ctx, s.insDecision)
	var rules, images [][]any
	for _, d := range pds {
		at := d.Time.UnixMicro()
		res, err := insDecision.ExecContext(ctx, d.ID, at, d.Operation, d.Namespace,
			d.Kind, d.Name, d.User, jsonList(d.Groups), d.Mode, d.Verdict, jsonList(d.Rules), rawArg(d.Images), jsonList(d.Exceptions))
		if err != nil {
			return err
		}
		n, err := res.RowsAffected()
		if err != nil {
			return err
		}
		if n == 0 {
			continue // recorded before
		}
		for _, r := range d.Rules {
			rules = append(rules, []any{d.ID, r, at, d.Verdict, d.Namespace})
		}
		for _, ref := range d.refs {
			images = append(images, []any{d.ID, ref, at, d.Verdict, d.Namespace})
		}
	}
	if err := s.insRule.exec(ctx, tx, rules); err != nil {
		return err
	}
	if err := s.insImage.exec(ctx, tx, images); err != nil {
		return err
	}
	return tx.Commit()
}

var sqliteDialect = dialect{
	placeholder: func(n int) string { return "?" + strconv.Itoa(n) },
	timeArg:     func(t time.Time) any { return t.UnixMicro() },
	unindexed:   func(col string) string { return "+" + col },
	jsonHas: func(col, v string) string {
		return "EXISTS (SELECT 1 FROM json_each(" + col + ") j WHERE j.value = " + v + ")"
	},
}

// Decisions implements Store.
func (s *SQLite) Decisions(ctx context.Context, q DecisionQuery) ([]Decision, error) {
	query, args := decisionsSQL(q, sqliteDialect)
	rows, err := s.r.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, s.fail("Decisions", err)
	}
	ds, err := collect(rows, func(sc scanner) (Decision, error) { return scanDecision(sc, sqliteTime) })
	if err != nil {
		return nil, s.fail("Decisions", err)
	}
	return ds, nil
}

// Decision implements Store.
func (s *SQLite) Decision(ctx context.Context, id string) (Decision, error) {
	d, err := scanDecision(s.decisionByID.QueryRowContext(ctx, id), sqliteTime)
	if errors.Is(err, sql.ErrNoRows) {
		return Decision{}, fmt.Errorf("%w: decision %q", ErrNotFound, id)
	}
	if err != nil {
		return Decision{}, s.fail("Decision", err)
	}
	return d, nil
}

// Prune implements Store. It deletes in batches, each its own transaction,
// so that writers wait for at most one batch. The file does not shrink:
// SQLite reuses the freed pages for new rows.
func (s *SQLite) Prune(ctx context.Context, before time.Time, maxRows int) (int, error) {
	n, err := prune(ctx, sqliteRunner{s.w}, sqliteDialect, before, maxRows)
	if err != nil {
		return n, s.fail("Prune", err)
	}
	return n, nil
}

type sqliteRunner struct{ db *sql.DB }

func (r sqliteRunner) execCount(ctx context.Context, q string, args ...any) (int64, error) {
	res, err := r.db.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (r sqliteRunner) queryPair(ctx context.Context, q string, args ...any) (a, b any, ok bool, err error) {
	err = r.db.QueryRowContext(ctx, q, args...).Scan(&a, &b)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, false, nil
	}
	return a, b, err == nil, err
}

// Close implements Store. The last connection to close checkpoints the WAL
// into the database file.
func (s *SQLite) Close() error {
	if s.reports != nil {
		s.reports.close() // what is queued is committed first
	}
	s.insRule.close()
	s.insImage.close()
	for _, st := range []*sql.Stmt{s.insBuild, s.insTag, s.insConn, s.insDecision,
		s.byImage, s.byTag, s.conns, s.decisionByID} {
		if st != nil {
			st.Close()
		}
	}
	return errors.Join(s.r.Close(), s.w.Close())
}

// schemaVersions returns the applied migrations' versions, for tests.
func (s *SQLite) schemaVersions(ctx context.Context) ([]int, error) {
	rows, err := s.r.QueryContext(ctx, "SELECT version FROM schema_migrations ORDER BY version")
	if err != nil {
		return nil, err
	}
	return collect(rows, func(sc scanner) (int, error) {
		var v int
		return v, sc.Scan(&v)
	})
}

func queryAll[T any](ctx context.Context, st *sql.Stmt, scan func(scanner) (T, error), args ...any) ([]T, error) {
	rows, err := st.QueryContext(ctx, args...)
	if err != nil {
		return nil, err
	}
	return collect(rows, scan)
}

func collect[T any](rows *sql.Rows, scan func(scanner) (T, error)) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// pingBusy opens the writer's first connection. Switching a file to WAL
// can answer SQLITE_BUSY at once, without waiting out busy_timeout, when
// another process opens the same file at the same moment (several
// replicas or tools starting together); it is retried for as long as
// busy_timeout would have waited.
func pingBusy(ctx context.Context, db *sql.DB) error {
	deadline := time.Now().Add(sqliteBusyTimeout)
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, 200*time.Millisecond) {
		err := db.PingContext(ctx)
		if err == nil || !strings.Contains(err.Error(), "SQLITE_BUSY") || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
	}
}
