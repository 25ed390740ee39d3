package evidence

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Postgres is the Store for several replicas: a PostgreSQL database they
// share, through a pgx connection pool.
type Postgres struct {
	pool *pgxpool.Pool
	now  func() time.Time
}

// migrationLockKey is the pg_advisory_xact_lock key that serialises schema
// migrations of replicas starting at once: "bldgrdmg" in ASCII.
const migrationLockKey int64 = 0x626c646772646d67

// pgMaxAttempts is how many times a write is tried when PostgreSQL aborts it
// for a deadlock or a serialization failure.
const pgMaxAttempts = 3

// OpenPostgres connects to the PostgreSQL database dsn names (a URL,
// "postgres://user@host/db?sslmode=verify-full", or key=value pairs, as
// pgx and libpq read them, including the PG* environment variables and
// pool_max_conns) and brings its schema up to date. The tables are created
// in the first schema of the search_path: give buildguard a database, or a
// schema with "search_path=buildguard" in the DSN, of its own.
//
// Writes are durable when AddReport or AddDecision(s) returns, as far as the
// server's synchronous_commit says: "on", its default, waits for the
// commit's WAL to be flushed to disk (and to synchronous standbys, if any).
func OpenPostgres(ctx context.Context, dsn string) (*Postgres, error) {
	fail := func(op string, err error) (*Postgres, error) {
		return nil, &Error{Backend: "postgres", Op: op, Err: err}
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors may quote the DSN, password and all.
		return fail("open", errors.New("cannot parse the DSN (not shown: it may hold a password)"))
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["application_name"]; !ok {
		cfg.ConnConfig.RuntimeParams["application_name"] = "buildguard"
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fail("open", err)
	}
	p := &Postgres{pool: pool, now: time.Now}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return fail("open", err)
	}
	if err := p.migrate(ctx); err != nil {
		pool.Close()
		return fail("migrate", err)
	}
	return p, nil
}

func (p *Postgres) migrate(ctx context.Context) error {
	ms, err := loadMigrations(migrationFiles, "migrations/postgres")
	if err != nil {
		return err
	}
	for _, m := range ms {
		if err := p.apply(ctx, m); err != nil {
			return &MigrationError{Version: m.version, Name: m.name, Err: err}
		}
	}
	return nil
}

// apply runs m unless it has been, holding a transaction-scoped advisory
// lock: replicas starting at once take turns, and those after the first
// find the migration recorded.
func (p *Postgres) apply(ctx context.Context, m migration) error {
	tx, err := p.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", migrationLockKey); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, createMigrationsTable); err != nil {
		return err
	}
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM schema_migrations WHERE version = $1", m.version).Scan(&n); err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	// No arguments: the simple protocol, which runs several statements.
	if _, err := tx.Exec(ctx, m.sql, pgx.QueryExecModeSimpleProtocol); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
		m.version, m.name, p.now().UnixMicro()); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

func (p *Postgres) fail(op string, err error) error {
	return &Error{Backend: "postgres", Op: op, Err: err}
}

// retry runs f again when PostgreSQL aborted it for a deadlock or a
// serialization failure.
func retry(ctx context.Context, f func() error) error {
	for attempt := 1; ; attempt++ {
		err := f()
		var pgErr *pgconn.PgError
		if err == nil || attempt == pgMaxAttempts || !errors.As(err, &pgErr) ||
			(pgErr.Code != "40P01" && pgErr.Code != "40001") || ctx.Err() != nil {
			return err
		}
	}
}

const pgInsertBuilds = `WITH ins AS (
	INSERT INTO builds (source, event_id, node, reporter, tool, image_id, started, finished, at, pids, container_ids, cgroup_id, steps, tags)
	SELECT u.source, u.event_id, u.node, u.reporter, u.tool, u.image_id, u.started, u.finished, u.at,
		u.pids::jsonb, u.container_ids::jsonb, u.cgroup_id, u.steps::jsonb, u.tags::jsonb
	FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[], $8::timestamptz[],
		$9::timestamptz[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[])
		AS u(source, event_id, node, reporter, tool, image_id, started, finished, at, pids, container_ids, cgroup_id, steps, tags)
	ON CONFLICT (node, source, event_id) DO NOTHING
	RETURNING id, node, source, event_id, at
), tagged AS (
	INSERT INTO build_tags (build_id, tag, node, at)
	SELECT DISTINCT ins.id, t.tag, ins.node, ins.at
	FROM ins JOIN unnest($15::text[], $16::text[], $17::text[], $18::text[]) AS t(node, source, event_id, tag) USING (node, source, event_id)
)
SELECT count(*) FROM ins`

const pgInsertConnections = `INSERT INTO connections (source, event_id, node, reporter, time, process, pid, cmdline, container_id, cgroup_id, dest_ip, dest_port, dest_name)
SELECT u.source, u.event_id, u.node, u.reporter, u.time, u.process, u.pid, u.cmdline, u.container_id, u.cgroup_id, u.dest_ip::inet, u.dest_port, u.dest_name
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::int[], $8::text[], $9::text[],
	$10::text[], $11::text[], $12::int[], $13::text[])
	AS u(source, event_id, node, reporter, time, process, pid, cmdline, container_id, cgroup_id, dest_ip, dest_port, dest_name)
ON CONFLICT (node, source, event_id) DO NOTHING`

// pgBuildsByImageID and pgBuildsByTag find the nodes that built an image
// or tagged a tag by skipping through the index from one node to the next
// (a loose index scan: one probe per node, however many builds a node
// has), take each node's newest builds, and order them node-fairly.
// Parameters: the image ID or tag, the most nodes, the most builds per
// node, the most builds.
const (
	pgBuildsByImageID = `WITH RECURSIVE nodes(node, n) AS (
	SELECT (SELECT node FROM builds WHERE image_id = $1 ORDER BY node LIMIT 1), 1
	UNION ALL
	SELECT (SELECT x.node FROM builds x WHERE x.image_id = $1 AND x.node > nodes.node ORDER BY x.node LIMIT 1), nodes.n + 1
	FROM nodes WHERE nodes.node IS NOT NULL AND nodes.n < $2
)
SELECT ` + buildColumns + ` FROM (
	SELECT p.*, row_number() OVER (PARTITION BY p.node ORDER BY p.at DESC, p.id DESC) AS rank
	FROM nodes CROSS JOIN LATERAL (
		SELECT x.* FROM builds x WHERE x.image_id = $1 AND x.node = nodes.node ORDER BY x.at DESC, x.id DESC LIMIT $3) p
	WHERE nodes.node IS NOT NULL
) b ORDER BY b.rank, b.at DESC, b.id DESC LIMIT $4`

	pgBuildsByTag = `WITH RECURSIVE nodes(node, n) AS (
	SELECT (SELECT node FROM build_tags WHERE tag = $1 ORDER BY node LIMIT 1), 1
	UNION ALL
	SELECT (SELECT x.node FROM build_tags x WHERE x.tag = $1 AND x.node > nodes.node ORDER BY x.node LIMIT 1), nodes.n + 1
	FROM nodes WHERE nodes.node IS NOT NULL AND nodes.n < $2
)
SELECT ` + buildColumns + ` FROM (
	SELECT p.*, row_number() OVER (PARTITION BY p.node ORDER BY p.at DESC, p.id DESC) AS rank
	FROM nodes CROSS JOIN LATERAL (
		SELECT x.build_id FROM build_tags x WHERE x.tag = $1 AND x.node = nodes.node ORDER BY x.at DESC, x.build_id DESC LIMIT $3) t
	JOIN builds p ON p.id = t.build_id
	WHERE nodes.node IS NOT NULL
) b ORDER BY b.rank, b.at DESC, b.id DESC LIMIT $4`
)

// AddReport implements Store. A report is one transaction of at most two
// statements, whatever its size.
func (p *Postgres) AddReport(ctx context.Context, r Report) (builds, conns int, err error) {
	pr, err := prepareReport(r)
	if err != nil {
		return 0, 0, err
	}
	if len(pr.builds) == 0 && len(pr.conns) == 0 {
		return 0, 0, nil
	}
	now := p.now()
	err = retry(ctx, func() error {
		builds, conns = 0, 0
		batch := pgReportBatch(pr, now)
		tx, err := p.pool.Begin(ctx)
		if err != nil {
			return err
		}
		defer tx.Rollback(ctx)
		res := tx.SendBatch(ctx, batch)
		if len(pr.builds) > 0 {
			if err := res.QueryRow().Scan(&builds); err != nil {
				res.Close()
				return err
			}
		}
		if len(pr.conns) > 0 {
			tag, err := res.Exec()
			if err != nil {
				res.Close()
				return err
			}
			conns = int(tag.RowsAffected())
		}
		if err := res.Close(); err != nil {
			return err
		}
		return tx.Commit(ctx)
	})
	if err != nil {
		return 0, 0, p.fail("AddReport", err)
	}
	return builds, conns, nil
}

func pgReportBatch(pr prepared, now time.Time) *pgx.Batch {
	b := &pgx.Batch{}
	if n := len(pr.builds); n > 0 {
		var (
			source, eventID, node, reporter, tool, imageID, cgroup = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
			started, finished                                      = make([]*time.Time, n), make([]*time.Time, n)
			at                                                     = make([]time.Time, n)
			pids, containerIDs, steps, tags                        = make([]any, n), make([]any, n), make([]any, n), make([]any, n)
			tagNode, tagSource, tagEvent, tagTag                   []string
		)
		for i, bd := range pr.builds {
			source[i], eventID[i], node[i], reporter[i], tool[i], imageID[i], cgroup[i] = bd.Source, bd.EventID, bd.Node, bd.Reporter, bd.Tool, bd.ImageID, bd.CgroupID
			started[i], finished[i] = timePtr(bd.Started), timePtr(bd.Finished)
			at[i] = microTime(buildTime(bd, now))
			pids[i], containerIDs[i], steps[i], tags[i] = jsonList(bd.PIDs), jsonList(bd.ContainerIDs), jsonList(bd.Steps), jsonList(bd.Tags)
			for _, t := range bd.Tags {
				tagNode, tagSource, tagEvent, tagTag = append(tagNode, bd.Node), append(tagSource, bd.Source), append(tagEvent, bd.EventID), append(tagTag, t)
			}
		}
		b.Queue(pgInsertBuilds, source, eventID, node, reporter, tool, imageID, started, finished, at,
			textArray(pids), textArray(containerIDs), cgroup, textArray(steps), textArray(tags),
			nonNil(tagNode), nonNil(tagSource), nonNil(tagEvent), nonNil(tagTag))
	}
	if n := len(pr.conns); n > 0 {
		var (
			source, eventID, node, reporter, process, cmdline, container, cgroup, destName = make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
			t                                                                              = make([]time.Time, n)
			pid, port                                                                      = make([]int, n), make([]int, n)
			dest                                                                           = make([]*string, n)
		)
		for i, c := range pr.conns {
			source[i], eventID[i], node[i], reporter[i], process[i], cmdline[i] = c.Source, c.EventID, c.Node, c.Reporter, c.Process, c.Cmdline
			container[i], cgroup[i], destName[i] = c.ContainerID, c.CgroupID, c.DestName
			t[i], pid[i], port[i] = microTime(c.Time), c.PID, c.DestPort
			if c.DestIP.IsValid() {
				s := c.DestIP.String()
				dest[i] = &s
			}
		}
		b.Queue(pgInsertConnections, source, eventID, node, reporter, t, process, pid, cmdline, container, cgroup, dest, port, destName)
	}
	return b
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = microTime(t)
	return &t
}

// textArray turns jsonList results (a string or nil) into a text[] with NULLs.
func textArray(vs []any) []*string {
	out := make([]*string, len(vs))
	for i, v := range vs {
		if s, ok := v.(string); ok {
			out[i] = &s
		}
	}
	return out
}

// nonNil makes an empty list an empty array rather than NULL.
func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func pgTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}

const pgConnColumns = "c.source, c.event_id, c.node, c.reporter, c.time, c.process, c.pid, c.cmdline, c.container_id, c.cgroup_id, host(c.dest_ip), c.dest_port, c.dest_name"

// BuildsByImageID implements Store.
func (p *Postgres) BuildsByImageID(ctx context.Context, imageID string) ([]Build, error) {
	if imageID == "" {
		return nil, nil
	}
	bs, err := pgQuery(ctx, p.pool, func(sc scanner) (Build, error) { return scanBuild(sc, pgTime) },
		pgBuildsByImageID, imageID, DefaultLimit, MaxBuildsPerNode, DefaultLimit)
	if err != nil {
		return nil, p.fail("BuildsByImageID", err)
	}
	return bs, nil
}

// BuildsByTag implements Store.
func (p *Postgres) BuildsByTag(ctx context.Context, tag string, limit int) ([]Build, error) {
	if tag == "" {
		return nil, nil
	}
	bs, err := pgQuery(ctx, p.pool, func(sc scanner) (Build, error) { return scanBuild(sc, pgTime) },
		pgBuildsByTag, tag, DefaultLimit, MaxBuildsPerNode, limitOr(limit, DefaultLimit))
	if err != nil {
		return nil, p.fail("BuildsByTag", err)
	}
	return bs, nil
}

// Connections implements Store.
func (p *Postgres) Connections(ctx context.Context, node string, from, to time.Time, limit int) ([]Connection, error) {
	if node == "" || to.Before(from) {
		return nil, nil
	}
	cs, err := pgQuery(ctx, p.pool, func(sc scanner) (Connection, error) { return scanConnection(sc, pgTime) },
		"SELECT "+pgConnColumns+` FROM connections c
		WHERE c.node = $1 AND c.time >= $2 AND c.time <= $3 ORDER BY c.time, c.id LIMIT $4`,
		node, microTime(from), microTime(to), limitOr(limit, DefaultLimit))
	if err != nil {
		return nil, p.fail("Connections", err)
	}
	return cs, nil
}

const pgInsertDecision = `WITH d AS (
	INSERT INTO decisions (id, time, operation, namespace, kind, name, username, user_groups, mode, verdict, rules, images, exceptions)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11::jsonb, $12::json, $13::jsonb)
	ON CONFLICT (id) DO NOTHING
	RETURNING id
), r AS (
	INSERT INTO decision_rules (decision_id, rule) SELECT DISTINCT d.id, x FROM d, unnest($14::text[]) AS x
), i AS (
	INSERT INTO decision_images (decision_id, image) SELECT DISTINCT d.id, x FROM d, unnest($15::text[]) AS x
)
SELECT count(*) FROM d`

// AddDecision implements Store: one statement, so one round trip.
func (p *Postgres) AddDecision(ctx context.Context, d Decision) error {
	refs, err := checkDecision(-1, d)
	if err != nil {
		return err
	}
	err = retry(ctx, func() error {
		var n int
		return p.pool.QueryRow(ctx, pgInsertDecision, d.ID, microTime(d.Time), d.Operation, d.Namespace, d.Kind, d.Name,
			d.User, jsonList(d.Groups), d.Mode, d.Verdict, jsonList(d.Rules), rawArg(d.Images), jsonList(d.Exceptions),
			nonNil(d.Rules), nonNil(refs)).Scan(&n)
	})
	if err != nil {
		return p.fail("AddDecision", err)
	}
	return nil
}

// pgInsertDecisions is pgInsertDecision for many decisions: one array
// per column, and (decision, rule) and (decision, image) pairs.
const pgInsertDecisions = `WITH d AS (
	INSERT INTO decisions (id, time, operation, namespace, kind, name, username, user_groups, mode, verdict, rules, images, exceptions)
	SELECT u.id, u.time, u.operation, u.namespace, u.kind, u.name, u.username, u.user_groups::jsonb, u.mode, u.verdict,
		u.rules::jsonb, u.images::json, u.exceptions::jsonb
	FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
		$9::text[], $10::text[], $11::text[], $12::text[], $13::text[])
		AS u(id, time, operation, namespace, kind, name, username, user_groups, mode, verdict, rules, images, exceptions)
	ON CONFLICT (id) DO NOTHING
	RETURNING id
), r AS (
	INSERT INTO decision_rules (decision_id, rule)
	SELECT DISTINCT d.id, x.rule FROM d JOIN unnest($14::text[], $15::text[]) AS x(id, rule) USING (id)
), i AS (
	INSERT INTO decision_images (decision_id, image)
	SELECT DISTINCT d.id, x.image FROM d JOIN unnest($16::text[], $17::text[]) AS x(id, image) USING (id)
)
SELECT count(*) FROM d`

// AddDecisions implements Store: one statement, so one round trip and one
// commit, however many decisions.
func (p *Postgres) AddDecisions(ctx context.Context, ds []Decision) error {
	pds, err := prepareDecisions(ds)
	if err != nil {
		return err
	}
	if len(pds) == 0 {
		return nil
	}
	n := len(pds)
	var (
		ids, ops, nss, kinds, names, users, modes, verdicts = make([]string, n), make([]string, n), make([]string, n),
			make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
		times                       = make([]time.Time, n)
		groups, rules, images, excs = make([]*string, n), make([]*string, n), make([]*string, n), make([]*string, n)
		ruleIDs, ruleVals           []string
		refIDs, refVals             []string
	)
	str := func(v any) *string {
		if s, ok := v.(string); ok {
			return &s
		}
		return nil
	}
	for i, d := range pds {
		ids[i], times[i], ops[i], nss[i], kinds[i], names[i] = d.ID, microTime(d.Time), d.Operation, d.Namespace, d.Kind, d.Name
		users[i], modes[i], verdicts[i] = d.User, d.Mode, d.Verdict
		groups[i], rules[i], images[i], excs[i] = str(jsonList(d.Groups)), str(jsonList(d.Rules)), str(rawArg(d.Images)), str(jsonList(d.Exceptions))
		for _, r := range d.Rules {
			ruleIDs, ruleVals = append(ruleIDs, d.ID), append(ruleVals, r)
		}
		for _, ref := range d.refs {
			refIDs, refVals = append(refIDs, d.ID), append(refVals, ref)
		}
	}
	err = retry(ctx, func() error {
		var stored int
		return p.pool.QueryRow(ctx, pgInsertDecisions, ids, times, ops, nss, kinds, names, users, groups, modes, verdicts,
			rules, images, excs, nonNil(ruleIDs), nonNil(ruleVals), nonNil(refIDs), nonNil(refVals)).Scan(&stored)
	})
	if err != nil {
		return p.fail("AddDecisions", err)
	}
	return nil
}

var pgDialect = dialect{
	placeholder: func(n int) string { return "$" + strconv.Itoa(n) },
	timeArg:     func(t time.Time) any { return t },
}

// Decisions implements Store.
func (p *Postgres) Decisions(ctx context.Context, q DecisionQuery) ([]Decision, error) {
	query, args := decisionsSQL(q, pgDialect)
	ds, err := pgQuery(ctx, p.pool, func(sc scanner) (Decision, error) { return scanDecision(sc, pgTime) }, query, args...)
	if err != nil {
		return nil, p.fail("Decisions", err)
	}
	return ds, nil
}

// Decision implements Store.
func (p *Postgres) Decision(ctx context.Context, id string) (Decision, error) {
	d, err := scanDecision(p.pool.QueryRow(ctx, "SELECT "+decisionColumns+" FROM decisions d WHERE d.id = $1", id), pgTime)
	if errors.Is(err, pgx.ErrNoRows) {
		return Decision{}, fmt.Errorf("%w: decision %q", ErrNotFound, id)
	}
	if err != nil {
		return Decision{}, p.fail("Decision", err)
	}
	return d, nil
}

// Prune implements Store. It deletes in batches, each its own transaction.
// PostgreSQL's autovacuum makes the space reusable.
func (p *Postgres) Prune(ctx context.Context, before time.Time, maxRows int) (int, error) {
	n, err := prune(ctx, pgRunner{p.pool}, pgDialect, before, maxRows)
	if err != nil {
		return n, p.fail("Prune", err)
	}
	return n, nil
}

type pgRunner struct{ pool *pgxpool.Pool }

func (r pgRunner) execCount(ctx context.Context, q string, args ...any) (int64, error) {
	tag, err := r.pool.Exec(ctx, q, args...)
	return tag.RowsAffected(), err
}

func (r pgRunner) queryPair(ctx context.Context, q string, args ...any) (a, b any, ok bool, err error) {
	err = r.pool.QueryRow(ctx, q, args...).Scan(&a, &b)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil, false, nil
	}
	return a, b, err == nil, err
}

// Close implements Store.
func (p *Postgres) Close() error {
	p.pool.Close()
	return nil
}

// schemaVersions returns the applied migrations' versions, for tests.
func (p *Postgres) schemaVersions(ctx context.Context) ([]int, error) {
	return pgQuery(ctx, p.pool, func(sc scanner) (int, error) {
		var v int
		return v, sc.Scan(&v)
	}, "SELECT version FROM schema_migrations ORDER BY version")
}

func pgQuery[T any](ctx context.Context, pool *pgxpool.Pool, scan func(scanner) (T, error), q string, args ...any) ([]T, error) {
	rows, err := pool.Query(ctx, q, args...)
	if err != nil {
		return nil, err
	}
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
