package evidence

import (
	"context"
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
		{"SELECT " + buildColumns + " FROM builds b WHERE b.image_id = 'x' ORDER BY b.at DESC, b.id DESC LIMIT 10", "builds_image_id"},
		{"SELECT " + buildColumns + " FROM build_tags t JOIN builds b ON b.id = t.build_id WHERE t.tag = 'x' ORDER BY t.at DESC, t.build_id DESC LIMIT 10", "build_tags_tag"},
	} {
		rows, err := s.r.QueryContext(ctx, "EXPLAIN QUERY PLAN "+tc.query)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			rows.Scan(&id, &parent, &notused, &detail)
			plan = append(plan, detail)
		}
		rows.Close()
		p := strings.Join(plan, "; ")
		if !strings.Contains(p, "USING INDEX "+tc.index) && !strings.Contains(p, "USING COVERING INDEX "+tc.index) || strings.Contains(p, "TEMP B-TREE") {
			t.Errorf("plan of %s:\n%s\nwant a search of %s without a sort", tc.query, p, tc.index)
		}
	}
}
