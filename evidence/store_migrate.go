package evidence

import (
	"embed"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"slices"
	"strconv"
)

// The schema of each backend is a numbered series of SQL files,
// migrations/<backend>/NNNN_name.sql. Each is applied once, in its own
// transaction that also records it in schema_migrations. A migration is
// never edited once released: a change is a new file, with the same number
// for both backends. Migrations only add, so an older buildguard keeps
// working on a schema a newer one migrated (replicas of a rolling update),
// with one exception said in docs/store.md: 0002 changes the evidence
// tables' unique keys, which older versions' inserts name.
//
//go:embed migrations/sqlite/*.sql migrations/postgres/*.sql
var migrationFiles embed.FS

type migration struct {
	version int
	name    string
	sql     string
}

var migrationName = regexp.MustCompile(`^([0-9]{4})_([a-z0-9_]+)\.sql$`)

// loadMigrations reads the migrations in dir of fsys, in order. Versions
// start at 1 and have no gaps or duplicates.
func loadMigrations(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	var ms []migration
	for _, e := range entries {
		m := migrationName.FindStringSubmatch(e.Name())
		if m == nil || e.IsDir() {
			return nil, fmt.Errorf("%s: not a migration: want NNNN_name.sql", path.Join(dir, e.Name()))
		}
		v, _ := strconv.Atoi(m[1])
		b, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		ms = append(ms, migration{version: v, name: m[2], sql: string(b)})
	}
	slices.SortFunc(ms, func(a, b migration) int { return a.version - b.version })
	for i, m := range ms {
		if m.version != i+1 {
			return nil, fmt.Errorf("%s: migration %04d_%s: want version %d (versions start at 1, no gaps or duplicates)", dir, m.version, m.name, i+1)
		}
	}
	if len(ms) == 0 {
		return nil, fmt.Errorf("%s: no migrations", dir)
	}
	return ms, nil
}

const createMigrationsTable = `CREATE TABLE IF NOT EXISTS schema_migrations (
	version    integer PRIMARY KEY,
	name       text NOT NULL,
	applied_at bigint NOT NULL -- microseconds since the Unix epoch
)`
