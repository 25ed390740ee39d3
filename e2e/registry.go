package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"buildguard.dev/buildguard/internal/selfsigned"
)

// Registry is go-containerregistry's registry on a loopback TLS listener,
// named "localhost:port" so its certificate and image references agree.
type Registry struct {
	Host   string // localhost:port
	CAFile string // PEM of the CA that signed its certificate
	srv    *http.Server
	pool   *x509.CertPool
	reqs   atomic.Int64
}

// StartRegistry serves a registry over TLS on 127.0.0.1, with its
// certificate and CA written under dir.
func StartRegistry(dir string) (*Registry, error) {
	pki := filepath.Join(dir, "registry-pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return nil, err
	}
	certs, err := selfsigned.Write(pki, "localhost", "127.0.0.1")
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(certs.Cert, certs.Key)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := &Registry{
		Host:   fmt.Sprintf("localhost:%d", ln.Addr().(*net.TCPAddr).Port),
		CAFile: certs.CA,
		pool:   x509.NewCertPool(),
		srv: &http.Server{
			ReadHeaderTimeout: 5 * time.Second,
			TLSConfig:         &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		},
	}
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	r.srv.Handler = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.reqs.Add(1)
		inner.ServeHTTP(w, req)
	})
	r.pool.AppendCertsFromPEM(certs.CAPEM)
	go r.srv.ServeTLS(ln, "", "")
	return r, nil
}

// Push writes img as repoAndTag ("e2e/shop:1") and returns the pushed
// reference's digest.
func (r *Registry) Push(repoAndTag string, img v1.Image) (v1.Hash, error) {
	ref, err := name.ParseReference(r.Host + "/" + repoAndTag)
	if err != nil {
		return v1.Hash{}, err
	}
	t := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.pool}}
	if err := remote.Write(ref, img, remote.WithTransport(t)); err != nil {
		return v1.Hash{}, fmt.Errorf("push %s: %w", ref, err)
	}
	return img.Digest()
}

// Requests returns how many requests the registry has served.
func (r *Registry) Requests() int64 { return r.reqs.Load() }

// Close stops the registry.
func (r *Registry) Close() error { return r.srv.Close() }
