package evidence

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func openSQLiteAt(t *testing.T, path string) *SQLite {
	t.Helper()
	s, err := OpenSQLite(t.Context(), path)
	if err != nil {
		t.Fatalf("OpenSQLite: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestSQLite(t *testing.T) {
	storeSuite(t, func(t *testing.T) Store {
		return openSQLiteAt(t, filepath.Join(t.TempDir(), "evidence.db"))
	})
	migrateSuite(t, func(t *testing.T) func(context.Context) (Store, error) {
		path := filepath.Join(t.TempDir(), "evidence.db")
		return func(ctx context.Context) (Store, error) { return OpenSQLite(ctx, path) }
	})
}

// TestSQLiteMigrateFrom1 opens a database that schema version 1 made and
// filled: the tables are rebuilt with their rows, and the new keys hold.
func TestSQLiteMigrateFrom1(t *testing.T) {
	ctx := t.Context()
	path := filepath.Join(t.TempDir(), "evidence.db")
	db, err := sql.Open("sqlite", path+"?_pragma=foreign_keys(1)")
	if err != nil {
		t.Fatal(err)
	}
	v1 := sqliteMigrations(t)[0]
	for _, q := range []string{createMigrationsTable, v1.sql,
		"INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, 'initial', 0)",
		fmt.Sprintf(v1Seed, fmt.Sprint(v1BuildAt))} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()
	s := openSQLiteAt(t, path)
	stCheckVersions(t, s)
	var fk string
	if err := s.r.QueryRowContext(ctx, `SELECT "table" FROM pragma_foreign_key_list('build_tags')`).Scan(&fk); err != nil || fk != "builds" {
		t.Errorf("build_tags references %q (%v), want builds", fk, err)
	}
	migratedFrom1(t, s, func(table string) int {
		var n int
		if err := s.r.QueryRowContext(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	})
}

func TestSQLiteOpenErrors(t *testing.T) {
	for _, path := range []string{"", ":memory:", "file:x.db?mode=ro", "a?b.db", filepath.Join(t.TempDir(), "no", "such", "dir.db")} {
		s, err := OpenSQLite(t.Context(), path)
		if err == nil {
			s.Close()
			t.Errorf("OpenSQLite(%q) succeeded, want an error", path)
		}
	}
}

// TestSQLiteSettings checks the pragmas durability rests on, the file's
// mode, and that admission-time lookups use their indexes.
func TestSQLiteSettings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "evidence.db")
	s := openSQLiteAt(t, path)
	ctx := t.Context()
	for _, tc := range []struct{ pragma, want string }{
		{"journal_mode", "wal"},
		{"synchronous", "2"}, // FULL
		{"foreign_keys", "1"},
		{"busy_timeout", "10000"},
		{"temp_store", "2"}, // MEMORY: statement journals without a file
	} {
		var got string
		if err := s.w.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("PRAGMA %s = %s, want %s", tc.pragma, got, tc.want)
		}
	}
	if _, err := s.r.ExecContext(ctx, "DELETE FROM connections"); err == nil {
		t.Errorf("a read connection could write")
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("database file mode = %v, %v; want 0600", fi.Mode().Perm(), err)
	}
	for _, tc := range []struct{ query, index string }{
		{"SELECT " + sqliteConnColumns + " FROM connections c WHERE c.node = 'n' AND c.time >= 1 AND c.time <= 2 ORDER BY c.time, c.id LIMIT 10", "connections_node_time"},
	} {
		p := queryPlan(t, s, tc.query)
		if !strings.Contains(p, "USING INDEX "+tc.index) && !strings.Contains(p, "USING COVERING INDEX "+tc.index) || strings.Contains(p, "TEMP B-TREE") {
			t.Errorf("plan of %s:\n%s\nwant a search of %s without a sort", tc.query, p, tc.index)
		}
	}
	// Build lookups probe the index once per node and take each node's
	// newest builds by rowid: the work does not grow with how many builds
	// one node reported. (The sort is of the few builds picked.)
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{sqliteBuildsByImageID, []string{
			"SEARCH x USING COVERING INDEX builds_image_node (image_id=? AND node>?)",
			"SEARCH b USING INTEGER PRIMARY KEY (rowid=?)",
			"SEARCH x USING COVERING INDEX builds_image_node (image_id=? AND node=?)",
		}},
		{sqliteBuildsByTag, []string{
			"SEARCH x USING COVERING INDEX build_tags_tag_node (tag=? AND node>?)",
			"SEARCH b USING INTEGER PRIMARY KEY (rowid=?)",
			"SEARCH x USING COVERING INDEX build_tags_tag_node (tag=? AND node=?)",
		}},
	} {
		p := queryPlan(t, s, tc.query, "x", 1000, MaxBuildsPerNode, 1000)
		for _, w := range tc.want {
			if !strings.Contains(p, w) {
				t.Errorf("plan of %s:\n%s\nwant %q", tc.query, p, w)
			}
		}
		for _, table := range []string{"SCAN builds", "SCAN build_tags", "SCAN x"} {
			if strings.Contains(p, table) {
				t.Errorf("plan of %s:\n%s\nwant no %q", tc.query, p, table)
			}
		}
	}
}

func queryPlan(t *testing.T, s *SQLite, query string, args ...any) string {
	t.Helper()
	rows, err := s.r.QueryContext(t.Context(), "EXPLAIN QUERY PLAN "+query, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var plan []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		rows.Scan(&id, &parent, &notused, &detail)
		plan = append(plan, detail)
	}
	return strings.Join(plan, "; ")
}
