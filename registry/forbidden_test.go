package registry_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/net/dns/dnsmessage"

	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
)

// dnsServer answers A queries from a table, on a loopback UDP port, and
// remembers the names it was asked.
type dnsServer struct {
	conn  net.PacketConn
	names map[string]netip.Addr // "evil.test." → address

	mu    sync.Mutex
	asked []string
}

func newDNSServer(t *testing.T, names map[string]netip.Addr) *dnsServer {
	t.Helper()
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &dnsServer{conn: conn, names: names}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.serve()
	}()
	t.Cleanup(func() {
		conn.Close()
		<-done
	})
	return s
}

func (s *dnsServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFrom(buf)
		if err != nil {
			return
		}
		var p dnsmessage.Parser
		h, err := p.Start(buf[:n])
		if err != nil {
			continue
		}
		q, err := p.Question()
		if err != nil {
			continue
		}
		s.mu.Lock()
		s.asked = append(s.asked, q.Name.String())
		s.mu.Unlock()
		addr, known := s.names[strings.ToLower(q.Name.String())]
		rcode := dnsmessage.RCodeSuccess
		if !known {
			rcode = dnsmessage.RCodeNameError
		}
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RCode: rcode})
		b.StartQuestions()
		b.Question(q)
		b.StartAnswers()
		if known && q.Type == dnsmessage.TypeA && addr.Is4() {
			b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 60}, dnsmessage.AResource{A: addr.As4()})
		}
		out, err := b.Finish()
		if err == nil {
			s.conn.WriteTo(out, from)
		}
	}
}

// askedNames returns the names asked so far.
func (s *dnsServer) askedNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.asked...)
}

// resolver asks only s.
func (s *dnsServer) resolver() *net.Resolver {
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", s.conn.LocalAddr().String())
	}}
}

func kindOf(t *testing.T, c *registry.Client, ref string) policy.ErrorKind {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	_, err = c.Resolve(ctx, registry.Request{Ref: r, Insecure: true})
	if err == nil {
		return ""
	}
	var re *policy.ResolveError
	if !errors.As(err, &re) {
		t.Fatalf("Resolve(%s) error %#v is not a *policy.ResolveError", ref, err)
	}
	return re.Kind
}

// TestForbiddenAddresses: a registry buildguard refuses to contact on
// purpose — written as a link-local or metadata address in any form,
// named by a host name that resolves there, or redirecting there — is a
// policy finding (forbidden-address), never an outage that failurePolicy
// allow would admit. No request ever reaches such an address: the dialer
// refuses it before connecting.
func TestForbiddenAddresses(t *testing.T) {
	reg := testregistry.New(t)
	reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: old}))
	port := reg.Host[strings.LastIndexByte(reg.Host, ':')+1:]
	dns := newDNSServer(t, map[string]netip.Addr{
		"good.test.":     netip.MustParseAddr("127.0.0.1"),
		"evil.test.":     netip.MustParseAddr("169.254.169.254"),
		"evil-six.test.": netip.MustParseAddr("169.254.170.2"), // ECS task metadata
	})
	// The default transport, with its dial check, resolving through dns.
	c := registry.New(registry.WithResolver(dns.resolver()))

	if k := kindOf(t, c, "good.test:"+port+"/acme/shop:1"); k != "" {
		t.Fatalf("Resolve through a name that resolves to the registry = %s, want success (the resolver is not used?)", k)
	}
	for _, ref := range []string{
		"169.254.169.254/acme/shop:1",
		"2852039166:" + port + "/acme/shop:1",
		"0xa9fea9fe:" + port + "/acme/shop:1",
		"0251.0376.0251.0376:" + port + "/acme/shop:1",
		"169.254.169.254.:" + port + "/acme/shop:1",
		"[64:ff9b::a9fe:a9fe]:" + port + "/acme/shop:1",
		"metadata.google.internal./acme/shop:1",
		"evil.test:" + port + "/acme/shop:1",
		"evil-six.test:" + port + "/acme/shop:1",
	} {
		if k := kindOf(t, c, ref); k != policy.ErrForbiddenAddress {
			t.Errorf("Resolve(%s) = %q, want %s", ref, k, policy.ErrForbiddenAddress)
		}
	}
	if asked := dns.askedNames(); !strings.Contains(strings.Join(asked, " "), "evil.test.") {
		t.Errorf("the resolver was asked %q, never about evil.test", asked)
	}
}

// TestRedirectToForbiddenAddress: a registry that answers with a redirect
// to a metadata address, for a manifest or a blob, is refused before the
// redirect is followed.
func TestRedirectToForbiddenAddress(t *testing.T) {
	redirect := func(to string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, to, http.StatusTemporaryRedirect) }
	}
	cfg := []byte(goodConfig)
	cfgDesc := descriptorOf(cfg, "application/vnd.oci.image.config.v1+json")
	manifest := imageManifest(t, cfgDesc)
	mDigest := descriptorOf(manifest, "application/vnd.oci.image.manifest.v1+json").Digest
	blobPath := "/v2/acme/x/blobs/" + cfgDesc.Digest.String()
	for _, to := range []string{
		"http://169.254.169.254/latest/meta-data/iam/",
		"http://metadata.google.internal/computeMetadata/v1/",
		"http://[fd00:ec2::254]/latest/",
		"http://2852039166/latest/",
	} {
		for what, routes := range map[string]map[string]http.HandlerFunc{
			"manifest": {"/v2/acme/x/manifests/" + mDigest.String(): redirect(to)},
			"config": {
				"/v2/acme/x/manifests/" + mDigest.String(): serve("application/vnd.oci.image.manifest.v1+json", manifest, false),
				blobPath: redirect(to),
			},
		} {
			srv := newExactServer(t, routes)
			ref := strings.TrimPrefix(srv.URL, "http://") + "/acme/x@" + mDigest.String()
			if k := kindOf(t, newClient(), ref); k != policy.ErrForbiddenAddress {
				t.Errorf("%s redirected to %s: Resolve = %q, want %s", what, to, k, policy.ErrForbiddenAddress)
			}
		}
	}
}
