// Package testpostgres gives tests a real PostgreSQL server: a throwaway one
// it starts from Debian's postgresql package (initdb into the test's
// temporary directory, postgres on 127.0.0.1 at a free port or where
// StartWith says, stopped when the test ends), or the existing server
// named by BUILDGUARD_TEST_POSTGRES_DSN.
// Each test then takes a fresh database of it with NewDatabase.
package testpostgres

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN is the environment variable that, when set, names an existing
// server to use instead of starting one, as a DSN whose user may create
// databases: "postgres://user:password@host:5432/postgres?sslmode=disable".
const EnvDSN = "BUILDGUARD_TEST_POSTGRES_DSN"

// binGlob is where Debian's postgresql-NN packages put the server binaries.
const binGlob = "/usr/lib/postgresql/*/bin"

// Server is a PostgreSQL server for a test.
type Server struct {
	// admin is a DSN of the server's "postgres" database as a superuser
	// (or the EnvDSN user).
	admin    string
	external bool

	// A throwaway server's state.
	binDir   string
	dir      string // the test's temporary directory; data/ and server.log in it
	host     string
	clients  []string
	port     int
	portSet  bool // the port is Options.Port: never another
	password string
	cred     *syscall.Credential // the postgres user's, when the test runs as root
	cmd      *exec.Cmd
	exited   chan struct{} // closed when cmd has been waited for
	log      *os.File
}

// Start returns a server for tb: the EnvDSN one if that is set, otherwise
// a new one that is stopped, and its files removed, when tb ends. It fails
// tb, not skips it, when PostgreSQL is not installed.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		s := &Server{admin: dsn, external: true}
		if err := s.ping(context.Background()); err != nil {
			tb.Fatalf("testpostgres: %s: %v", EnvDSN, redact(err, dsn))
		}
		return s
	}
	return StartWith(tb, Options{})
}

// Options say where a throwaway server listens and who may connect.
type Options struct {
	// Host is the address it listens on. The default is 127.0.0.1.
	Host string
	// Port is its port. The default is a free one.
	Port int
	// Clients are CIDRs, besides loopback, whose clients may log in with
	// the password (pg_hba.conf).
	Clients []string
}

// StartWith returns a new throwaway server as opts say, whatever EnvDSN
// names: for clients that must reach it at a given address, like the pods
// of a node. It is stopped, and its files removed, when tb ends.
func StartWith(tb testing.TB, opts Options) *Server {
	tb.Helper()
	s, err := Launch(tb.TempDir(), opts)
	if err != nil {
		tb.Fatalf("testpostgres: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// Launch starts a throwaway server as opts say, with its files in dir (an
// empty directory), for programs that are not tests, like the demo. The
// caller stops it with Stop; it also dies with the calling process.
func Launch(dir string, opts Options) (*Server, error) {
	binDir, err := findBinDir(binGlob)
	if err != nil {
		return nil, fmt.Errorf("%v\nInstall Debian's postgresql package (apt-get install postgresql; CI does), or set %s to use an existing server.", err, EnvDSN)
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	s := &Server{binDir: binDir, dir: dir, password: randomHex(16), host: opts.Host, port: opts.Port, portSet: opts.Port != 0, clients: opts.Clients}
	if os.Geteuid() == 0 {
		// postgres refuses to run as root: run it as the postgres user
		// the package creates, in a directory that user owns.
		u, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("running as root, and there is no postgres user to run the server as (%v).\nInstall Debian's postgresql package (apt-get install postgresql), which creates it.", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(s.dir, uid, gid); err != nil {
			return nil, err
		}
		// The directory above (a test's is 0700): let postgres through.
		if err := os.Chmod(filepath.Dir(s.dir), 0o711); err != nil {
			return nil, err
		}
	}
	if err := s.initdb(); err != nil {
		return nil, err
	}
	if err := s.start(); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

// Managed reports whether the server is a throwaway one this package
// started (and can Kill and Restart), not the EnvDSN one.
func (s *Server) Managed() bool { return !s.external }

// NewDatabase creates an empty database and returns its DSN. On an
// EnvDSN server it is dropped when tb ends.
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dsn, name, err := s.createDatabase(ctx)
	if err != nil {
		tb.Fatalf("testpostgres: create database: %v", err)
	}
	if s.external {
		tb.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := s.exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
				tb.Errorf("testpostgres: drop database %s: %v", name, err)
			}
		})
	}
	return dsn
}

// CreateDatabase creates an empty database and returns its DSN.
func (s *Server) CreateDatabase(ctx context.Context) (string, error) {
	dsn, _, err := s.createDatabase(ctx)
	return dsn, err
}

func (s *Server) createDatabase(ctx context.Context) (dsn, name string, err error) {
	name = "buildguard_test_" + randomHex(6)
	if err := s.exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", "", err
	}
	return withDatabase(s.admin, name), name, nil
}

// Kill sends SIGKILL to a throwaway server's processes, the postmaster
// and its backends, as a crash of the machine would, and waits for the
// postmaster to die. Restart starts it again on the same files.
func (s *Server) Kill(tb testing.TB) {
	tb.Helper()
	if s.external {
		tb.Fatalf("testpostgres: cannot kill the %s server", EnvDSN)
	}
	pid := s.cmd.Process.Pid
	children := childrenOf(pid)
	syscall.Kill(pid, syscall.SIGKILL)
	for _, c := range children {
		syscall.Kill(c, syscall.SIGKILL)
	}
	<-s.exited
}

// childrenOf returns the processes whose parent is pid.
func childrenOf(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(b[i+1:]))
		if len(fields) < 2 || fields[1] != strconv.Itoa(pid) {
			continue
		}
		if c, err := strconv.Atoi(filepath.Base(filepath.Dir(f))); err == nil {
			out = append(out, c)
		}
	}
	return out
}

// Restart starts a killed or stopped throwaway server again, on the same
// data directory and port, and waits until it accepts connections (crash
// recovery done).
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if s.external {
		tb.Fatalf("testpostgres: cannot restart the %s server", EnvDSN)
	}
	if err := s.start(); err != nil {
		tb.Fatalf("testpostgres: %v", err)
	}
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }

func (s *Server) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(s.binDir, name), args...)
	cmd.Dir = s.dir
	cmd.Env = []string{"LC_ALL=C", "LANG=C", "PATH=" + os.Getenv("PATH"), "TZ=UTC"}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: s.cred,
		// A process group of its own, and death with the test binary,
		// however that ends: no server is left behind. (The kernel sets
		// the parent-death signal after the credentials change, so it
		// holds for the postgres user too.)
		Setpgid:   true,
		Pdeathsig: syscall.SIGKILL,
	}
	return cmd
}

func (s *Server) initdb() error {
	pwfile := filepath.Join(s.dir, "pwfile")
	if err := os.WriteFile(pwfile, []byte(s.password+"\n"), 0o600); err != nil {
		return err
	}
	if s.cred != nil {
		os.Chown(pwfile, int(s.cred.Uid), int(s.cred.Gid))
	}
	cmd := s.command("initdb", "-D", s.dataDir(), "-U", "postgres", "--pwfile="+pwfile,
		"--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
	out, err := cmd.CombinedOutput()
	os.Remove(pwfile)
	if err != nil {
		return fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if len(s.clients) == 0 {
		return nil
	}
	f, err := os.OpenFile(filepath.Join(s.dataDir(), "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	for _, c := range s.clients {
		fmt.Fprintf(f, "host all all %s scram-sha-256\n", c)
	}
	return f.Close()
}

// start runs postgres and waits until it accepts connections. A port
// taken between choosing it and binding it is retried with another; a
// server restarted after a crash is retried while the old one's backends
// are still exiting.
func (s *Server) start() error {
	deadline := time.Now().Add(60 * time.Second)
	for attempt := 1; ; attempt++ {
		if s.port == 0 {
			p, err := freePort(s.host)
			if err != nil {
				return err
			}
			s.port = p
		}
		err := s.startOnce()
		if err == nil {
			return nil
		}
		logText := s.logText()
		if time.Now().After(deadline) || attempt == 20 ||
			!strings.Contains(logText, "could not bind") && !strings.Contains(logText, "is still in use") &&
				!strings.Contains(logText, "lock file") {
			return fmt.Errorf("starting postgres: %v\nserver log:\n%s", err, logText)
		}
		if strings.Contains(logText, "could not bind") && !s.restarted() && !s.portSet {
			s.port = 0
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// restarted reports whether the server has run before (its port must stay).
func (s *Server) restarted() bool {
	_, err := os.Stat(filepath.Join(s.dir, "started"))
	return err == nil
}

func (s *Server) startOnce() error {
	if s.log != nil {
		s.log.Close()
	}
	logFile, err := os.Create(filepath.Join(s.dir, "server.log"))
	if err != nil {
		return err
	}
	s.log = logFile
	cmd := s.command("postgres", "-D", s.dataDir(), "-p", strconv.Itoa(s.port),
		"-c", "listen_addresses="+s.host, "-c", "unix_socket_directories=",
		"-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "max_connections=200")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	exited := make(chan struct{})
	s.exited = exited
	go func() { cmd.Wait(); close(exited) }()
	s.admin = fmt.Sprintf("postgres://postgres:%s@%s/postgres?sslmode=disable", s.password, net.JoinHostPort(s.host, strconv.Itoa(s.port)))
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			return fmt.Errorf("postgres exited: %v", cmd.ProcessState)
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s.ping(ctx)
		cancel()
		if err == nil {
			os.WriteFile(filepath.Join(s.dir, "started"), nil, 0o600)
			return nil
		}
		if time.Now().After(deadline) {
			s.Stop()
			return fmt.Errorf("not accepting connections after 60s: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop shuts a throwaway server down fast (SIGINT: running transactions
// are rolled back, connections closed) and kills it if it has not exited
// in 15 seconds.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	select {
	case <-s.exited:
	default:
		s.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-s.exited:
		case <-time.After(15 * time.Second):
			syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
			<-s.exited
		}
	}
	if s.log != nil {
		s.log.Close()
	}
}

func (s *Server) logText() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "server.log"))
	return string(b)
}

func (s *Server) ping(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

func (s *Server) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.admin)
	if err != nil {
		return redact(err, s.admin)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// findBinDir returns the bin directory of the newest PostgreSQL that
// Debian's packages installed (glob), or of the postgres on PATH.
func findBinDir(glob string) (string, error) {
	dirs, _ := filepath.Glob(glob)
	version := func(dir string) int {
		v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
		return v
	}
	slices.SortFunc(dirs, func(a, b string) int { return version(b) - version(a) })
	for _, d := range dirs {
		if hasServer(d) {
			return d, nil
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		if p, err = filepath.EvalSymlinks(p); err == nil && hasServer(filepath.Dir(p)) {
			return filepath.Dir(p), nil
		}
	}
	return "", fmt.Errorf("PostgreSQL server binaries (initdb, postgres) not found in %s or on PATH", glob)
}

func hasServer(dir string) bool {
	for _, name := range []string{"initdb", "postgres"} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// withDatabase returns dsn with its database replaced by name.
func withDatabase(dsn, name string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			u.Path = "/" + name
			return u.String()
		}
	}
	return dsn + " dbname=" + name // key=value: the last one counts
}

// redact removes a DSN's password from an error's text.
func redact(err error, dsn string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	if u, perr := url.Parse(dsn); perr == nil && u.User != nil {
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "xxxxx")
		}
	}
	return errors.New(msg)
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
