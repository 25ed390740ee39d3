package evidence

import (
	"context"
	"strings"
	"testing"

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
