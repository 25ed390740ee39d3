package evidence

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"buildguard.dev/buildguard/internal/testpostgres"
)

func openPostgresDSN(t testing.TB, dsn string) *Postgres {
	t.Helper()
	s, err := OpenPostgres(context.Background(), dsn)
	if err != nil {
		t.Fatalf("OpenPostgres: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestPostgres(t *testing.T) {
	srv := testpostgres.Start(t)
	storeSuite(t, func(t *testing.T) Store {
		return openPostgresDSN(t, srv.NewDatabase(t))
	})
	migrateSuite(t, func(t *testing.T) func(context.Context) (Store, error) {
		dsn := srv.NewDatabase(t)
		return func(ctx context.Context) (Store, error) { return OpenPostgres(ctx, dsn) }
	})
}

// TestPostgresMigrateFrom1 opens a database that schema version 1 made
// and filled: the rows stay, and the new keys hold.
func TestPostgresMigrateFrom1(t *testing.T) {
	ctx := t.Context()
	srv := testpostgres.Start(t)
	dsn := srv.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ms, err := loadMigrations(migrationFiles, "migrations/postgres")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{createMigrationsTable, ms[0].sql,
		"INSERT INTO schema_migrations (version, name, applied_at) VALUES (1, 'initial', 0)",
		fmt.Sprintf(v1Seed, fmt.Sprintf("to_timestamp(%d / 1e6)", v1BuildAt))} {
		if _, err := conn.Exec(ctx, q, pgx.QueryExecModeSimpleProtocol); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s := openPostgresDSN(t, dsn)
	stCheckVersions(t, s)
	migratedFrom1(t, s, func(table string) int {
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	})
}

func TestPostgresOpenErrors(t *testing.T) {
	for _, dsn := range []string{"postgres://u:secret@127.0.0.1:1/db?sslmode=disable&connect_timeout=2", "postgres://u:secret@%zz/db"} {
		s, err := OpenPostgres(t.Context(), dsn)
		if err == nil {
			s.Close()
			t.Errorf("OpenPostgres(%q) succeeded, want an error", dsn)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("OpenPostgres error %q shows the password", err)
		}
	}
}
