package testpostgres

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

func TestFindBinDir(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	empty := filepath.Join(t.TempDir(), "*", "bin")
	if dir, err := findBinDir(empty); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("findBinDir(%q) = %q, %v; want a not-found error", empty, dir, err)
	}
	root := t.TempDir()
	for _, v := range []string{"13", "15", "9"} {
		bin := filepath.Join(root, v, "bin")
		os.MkdirAll(bin, 0o755)
		for _, name := range []string{"initdb", "postgres"} {
			os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"), 0o755)
		}
	}
	if dir, err := findBinDir(filepath.Join(root, "*", "bin")); err != nil || dir != filepath.Join(root, "15", "bin") {
		t.Errorf("findBinDir = %q, %v; want the newest, %s", dir, err, filepath.Join(root, "15", "bin"))
	}
}

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ dsn, want string }{
		{"postgres://u:p@127.0.0.1:5432/postgres?sslmode=disable", "postgres://u:p@127.0.0.1:5432/db1?sslmode=disable"},
		{"host=127.0.0.1 user=u dbname=postgres", "host=127.0.0.1 user=u dbname=postgres dbname=db1"},
	} {
		if got := withDatabase(tc.dsn, "db1"); got != tc.want {
			t.Errorf("withDatabase(%q) = %q, want %q", tc.dsn, got, tc.want)
		}
	}
}

// TestServer starts a server, uses a database of it, and checks that the
// server is gone when the test that started it ends.
func TestServer(t *testing.T) {
	if os.Getenv(EnvDSN) != "" {
		t.Skipf("%s is set: no server to start", EnvDSN)
	}
	var pid int
	t.Run("start", func(t *testing.T) {
		s := Start(t)
		pid = s.cmd.Process.Pid
		dsn := s.NewDatabase(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var user string
		if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil || user != "postgres" {
			t.Errorf("current_user = %q, %v; want postgres", user, err)
		}
		if _, err := pgx.Connect(ctx, strings.Replace(dsn, s.password, "wrong", 1)); err == nil {
			t.Errorf("connected with a wrong password")
		}
	})
	if pid == 0 {
		t.Fatal("no server started")
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("postmaster %d still there after its test ended (kill 0: %v)", pid, err)
	}
}
