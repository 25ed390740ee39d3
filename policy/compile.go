package policy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"go.yaml.in/yaml/v3"

	"buildguard.dev/buildguard/internal/forbidden"
)

// DefaultMinAge is freshness.minAge when the policy leaves it out.
const DefaultMinAge = 10 * time.Minute

// DefaultMaxClockSkew is freshness.maxClockSkew when the policy leaves it out.
const DefaultMaxClockSkew = time.Minute

// maxPolicyBytes bounds a policy file; a larger one is a mistake.
const maxPolicyBytes = 4 << 20

// FieldError is a policy that does not validate. Field is the path of the
// offending field, e.g. "exceptions[1].expires".
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// File is a policy file: a versioned header and a Spec.
type File struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Spec       `yaml:",inline"`
}

// Policy is a compiled, validated Spec. It is immutable and safe for
// concurrent use. The zero value is not usable; use Compile.
type Policy struct {
	name         string
	spec         Spec
	mode         Mode
	failure      FailurePolicy
	allow        []glob
	insecure     []glob
	sources      Sources
	actions      map[RuleID]Action
	minAge       time.Duration
	maxClockSkew time.Duration
	exceptions   []exception
	changes      *changeControl
	steps        *stepMemo
	allowed      *repoMemo[name.Repository]
	// insecureHosts remembers Insecure's answers as allowed does
	// RegistryAllowed's.
	insecureHosts *repoMemo[string]
	// verifiedAction is the action on steps whose only findings are
	// verified downloads; "" for the rule's action.
	verifiedAction Action
	evidence       *nodeEvidence
	prov           provenanceSettings
}

type exception struct {
	name       string
	reason     string
	approvedBy string
	expires    time.Time
	digests    []digestRef
	globs      []glob
}

type digestRef struct {
	repo   string // registry/repository
	digest string
}

// ReadFile reads and compiles the policy file at path.
func ReadFile(path string) (*Policy, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	p, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return p, nil
}

// Parse decodes a policy file strictly (an unknown field is an error that
// names the field and its line) and compiles it.
func Parse(data []byte) (*Policy, error) {
	if len(data) > maxPolicyBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxPolicyBytes)
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var f File
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty policy file")
		}
		return nil, fmt.Errorf("decode: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document; a policy file holds exactly one")
	}
	if f.APIVersion != APIVersion {
		return nil, &FieldError{Field: "apiVersion", Msg: fmt.Sprintf("%q is not supported; use %q", f.APIVersion, APIVersion)}
	}
	if f.Kind != Kind {
		return nil, &FieldError{Field: "kind", Msg: fmt.Sprintf("%q is not supported; use %q", f.Kind, Kind)}
	}
	return Compile(f.Spec)
}

// Compile validates s and prepares it for Decide. Every problem is a
// *FieldError naming the field.
func Compile(s Spec) (*Policy, error) { return CompileNamed("", s) }

// CompileNamed is Compile for a policy with a name, such as a
// ClusterBuildPolicy's; findings then say which policy raised them.
func CompileNamed(name string, s Spec) (*Policy, error) {
	p := &Policy{name: name, spec: s, mode: s.Mode, failure: s.FailurePolicy, steps: &stepMemo{}, allowed: newRepoMemo(), insecureHosts: &repoMemo[string]{}}
	if p.mode == "" {
		p.mode = ModeEnforce
	}
	if !p.mode.Valid() {
		return nil, &FieldError{Field: "mode", Msg: fmt.Sprintf("%q is not one of enforce, warn, audit", s.Mode)}
	}
	if p.failure == "" {
		p.failure = FailDeny
	}
	if p.failure != FailDeny && p.failure != FailAllow {
		return nil, &FieldError{Field: "failurePolicy", Msg: fmt.Sprintf("%q is not one of deny, allow", s.FailurePolicy)}
	}
	var err error
	if p.allow, err = compileGlobs("registries.allow", s.Registries.Allow); err != nil {
		return nil, err
	}
	if p.insecure, err = compileGlobs("registries.insecure", s.Registries.Insecure); err != nil {
		return nil, err
	}
	if p.sources, err = ParseSources(s.TrustedSources); err != nil {
		return nil, &FieldError{Field: "trustedSources", Msg: err.Error()}
	}
	p.minAge, p.maxClockSkew = s.Freshness.MinAge.Duration, s.Freshness.MaxClockSkew.Duration
	if p.minAge < 0 {
		return nil, &FieldError{Field: "freshness.minAge", Msg: "must not be negative"}
	}
	if p.maxClockSkew < 0 {
		return nil, &FieldError{Field: "freshness.maxClockSkew", Msg: "must not be negative"}
	}
	if p.minAge == 0 {
		p.minAge = DefaultMinAge
	}
	if p.maxClockSkew == 0 {
		p.maxClockSkew = DefaultMaxClockSkew
	}
	p.actions = make(map[RuleID]Action, len(defaultActions))
	for r, a := range defaultActions {
		p.actions[r] = a
	}
	for r, a := range s.Rules {
		if _, ok := defaultActions[r]; !ok {
			return nil, &FieldError{Field: "rules." + string(r), Msg: fmt.Sprintf("unknown rule; known rules are %s", joinRules(Rules()))}
		}
		if a != ActionDeny && a != ActionWarn && a != ActionIgnore {
			return nil, &FieldError{Field: "rules." + string(r), Msg: fmt.Sprintf("%q is not one of deny, warn, ignore", a)}
		}
		p.actions[r] = a
	}
	if bs := s.BuildSteps; bs != nil && bs.VerifiedDownloads != "" {
		a := bs.VerifiedDownloads
		if a != ActionDeny && a != ActionWarn && a != ActionIgnore {
			return nil, &FieldError{Field: "buildSteps.verifiedDownloads", Msg: fmt.Sprintf("%q is not one of deny, warn, ignore", a)}
		}
		p.verifiedAction = a
	}
	x, err := CompileExceptions("exceptions", s.Exceptions)
	if err != nil {
		return nil, err
	}
	p.exceptions = x.list
	if p.evidence, err = compileNodeEvidence(s.NodeEvidence); err != nil {
		return nil, err
	}
	if p.changes, err = compileChangeControl(s.ChangeControl); err != nil {
		return nil, err
	}
	if p.prov, err = compileProvenance(s.Signatures, s.Provenance); err != nil {
		return nil, err
	}
	return p, nil
}

// Exceptions is a compiled list of exceptions, such as the
// BuildPolicyExceptions of a namespace. The zero value is empty.
type Exceptions struct{ list []exception }

// CompileExceptions validates es; field prefixes error paths
// ("exceptions" gives "exceptions[1].expires").
func CompileExceptions(field string, es []Exception) (Exceptions, error) {
	var x Exceptions
	for i, e := range es {
		ce, err := compileException(fmt.Sprintf("%s[%d]", field, i), e)
		if err != nil {
			return Exceptions{}, err
		}
		x.list = append(x.list, ce)
	}
	return x, nil
}

// Join returns the exceptions of x and y.
func (x Exceptions) Join(y Exceptions) Exceptions {
	return Exceptions{list: append(append([]exception(nil), x.list...), y.list...)}
}

// Len returns the number of exceptions.
func (x Exceptions) Len() int { return len(x.list) }

func joinRules(rs []RuleID) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

func compileException(field string, e Exception) (exception, error) {
	ce := exception{name: e.Name, reason: strings.TrimSpace(e.Reason), approvedBy: e.ApprovedBy}
	if ce.name == "" {
		ce.name = field
	}
	if len(e.Images) == 0 {
		return ce, &FieldError{Field: field + ".images", Msg: "required: at least one digest reference or glob"}
	}
	if ce.reason == "" {
		return ce, &FieldError{Field: field + ".reason", Msg: "required"}
	}
	if e.Expires == "" {
		return ce, &FieldError{Field: field + ".expires", Msg: "required, in RFC 3339 (e.g. 2026-12-01T00:00:00Z)"}
	}
	t, err := time.Parse(time.RFC3339, e.Expires)
	if err != nil {
		return ce, &FieldError{Field: field + ".expires", Msg: fmt.Sprintf("%q is not RFC 3339 (e.g. 2026-12-01T00:00:00Z)", e.Expires)}
	}
	ce.expires = t
	for j, img := range e.Images {
		f := fmt.Sprintf("%s.images[%d]", field, j)
		if strings.Contains(img, "@") {
			d, err := name.NewDigest(img)
			if err != nil {
				return ce, &FieldError{Field: f, Msg: fmt.Sprintf("%q is not a valid digest reference: %v", img, err)}
			}
			ce.digests = append(ce.digests, digestRef{repo: d.Context().Name(), digest: d.DigestStr()})
			continue
		}
		g, err := compileGlob(img)
		if err != nil {
			return ce, &FieldError{Field: f, Msg: err.Error()}
		}
		ce.globs = append(ce.globs, g)
	}
	return ce, nil
}

// Name returns the policy's name, "" for a policy file.
func (p *Policy) Name() string { return p.name }

// Spec returns the spec the policy was compiled from.
func (p *Policy) Spec() Spec { return p.spec }

// Mode returns the policy's mode.
func (p *Policy) Mode() Mode { return p.mode }

// PinDigests reports whether images are to be pinned to their digests.
func (p *Policy) PinDigests() bool { return p.spec.PinDigests == nil || *p.spec.PinDigests }

// FailurePolicy returns the policy's failure policy.
func (p *Policy) FailurePolicy() FailurePolicy { return p.failure }

// Action returns the action the policy takes on rule's findings.
func (p *Policy) Action(rule RuleID) Action {
	if rule == RuleRegistryUnavailable {
		if p.failure == FailAllow {
			return ActionWarn
		}
		return ActionDeny
	}
	if rule == RuleInvalidModeLabel || rule == RuleImplausibleBuildTime {
		return ActionWarn
	}
	if a, ok := p.actions[rule]; ok {
		return a
	}
	return ActionDeny
}

// RegistryAllowed reports whether repo ("registry/repository", as
// name.Repository.Name returns it) may be used and contacted. A registry
// on a link-local or cloud-metadata address is never allowed, whatever
// registries.allow says.
func (p *Policy) RegistryAllowed(repo name.Repository) bool {
	// Keyed by the repository itself rather than its name: the name is
	// a new string each time it is asked for, once per image of every
	// admission.
	return p.allowed.get(repo, func(repo name.Repository) bool {
		if ForbiddenHost(repo.RegistryStr()) {
			return false
		}
		_, ok := matchAny(p.allow, repo.Name())
		return ok
	})
}

// maxMemoRepos bounds the repositories a policy remembers the answer of
// registries.allow for.
const maxMemoRepos = 8192

// repoMemo remembers RegistryAllowed's answers by repository (and
// Insecure's by registry): the same
// repositories come back with every admission, and matching the globs
// (regular expressions) and the forbidden addresses cost more than the
// rest of a cached image's judgement. It only memoizes a pure function.
type repoMemo[K comparable] struct {
	mu sync.RWMutex
	m  map[K]bool
}

func (r *repoMemo[K]) get(k K, f func(K) bool) bool {
	if r == nil {
		return f(k)
	}
	r.mu.RLock()
	ok, found := r.m[k]
	r.mu.RUnlock()
	if found {
		return ok
	}
	ok = f(k)
	r.mu.Lock()
	if r.m == nil || len(r.m) >= maxMemoRepos {
		r.m = map[K]bool{}
	}
	r.m[k] = ok
	r.mu.Unlock()
	return ok
}

// Insecure reports whether registry (host[:port]) is to be reached over
// plain HTTP.
func (p *Policy) Insecure(registry string) bool {
	if len(p.insecure) == 0 {
		return false
	}
	return p.insecureHosts.get(registry, func(registry string) bool {
		_, ok := matchAny(p.insecure, registry)
		return ok
	})
}

// ForbiddenHost reports whether host (a registry host, optionally with a
// port) names an address buildguard must never contact: link-local
// addresses (169.254.0.0/16, fe80::/10), where cloud metadata services
// live, and the AWS IPv6 metadata address fd00:ec2::254. Besides the
// usual forms it knows the ones inet_aton, and so many resolvers and
// proxies, accept for an IPv4 address (2852039166, 0xa9fea9fe,
// 0251.0376.0251.0376, 169.254.43518), a trailing dot, and IPv4
// addresses inside IPv6 ones. Host names are checked again at dial time,
// when they have resolved.
func ForbiddenHost(host string) bool {
	h := strings.ToLower(host)
	// Each parser is tried only on what it may accept: a registry named
	// by DNS, as nearly all are, fails them all, and each failure costs
	// an error allocated, for every image of every review.
	// netip.ParseAddrPort splits at the last colon and accepts before it
	// an IPv6 address in brackets or an IPv4 one.
	if i := strings.LastIndexByte(h, ':'); i > 0 && (h[0] == '[' || ipv4Literal(h[:i])) {
		if ap, err := netip.ParseAddrPort(h); err == nil {
			return forbidden.Addr(ap.Addr())
		}
	}
	if strings.HasPrefix(h, "[") {
		if i := strings.LastIndexByte(h, ']'); i > 0 {
			h = h[1:i]
		}
	} else if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.Contains(h[:i], ":") {
		h = h[:i]
	}
	// A fully qualified name: "169.254.169.254." is 169.254.169.254.
	h = strings.TrimRight(h, ".")
	if strings.IndexByte(h, ':') >= 0 || ipv4Literal(h) {
		if a, err := netip.ParseAddr(h); err == nil {
			return forbidden.Addr(a)
		}
	}
	if a, ok := parseInetAton(h); ok {
		return forbidden.Addr(a)
	}
	return h == "metadata.google.internal" || h == "metadata" || h == "instance-data" || strings.HasSuffix(h, ".metadata.google.internal")
}

// parseInetAton parses an IPv4 address the way inet_aton does: one to
// four parts separated by dots, each decimal, octal (leading 0) or hex
// (leading 0x), the last part filling the bytes the others leave.
func parseInetAton(s string) (netip.Addr, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' || c == 'x' || c == '.') {
			return netip.Addr{}, false // no part can parse: spare trying
		}
	}
	parts := strings.Split(s, ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	var v uint64
	for i, p := range parts {
		base := 10
		switch {
		case strings.HasPrefix(p, "0x"):
			base, p = 16, p[2:]
		case len(p) > 1 && p[0] == '0':
			base, p = 8, p[1:]
		}
		if p == "" {
			return netip.Addr{}, false
		}
		n, err := strconv.ParseUint(p, base, 32)
		if err != nil || strings.ContainsAny(p, "+-_") {
			return netip.Addr{}, false
		}
		bits := 8
		if i == len(parts)-1 {
			bits = 8 * (4 - i)
		}
		if n >= 1<<bits {
			return netip.Addr{}, false
		}
		v = v<<bits | n
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// ipv4Literal reports whether s is made of what netip.ParseAddr accepts
// in an IPv4 address, digits and dots, and nothing else: what has more
// is IPv6 (a colon) or not an address.
func ipv4Literal(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && c != '.' {
			return false
		}
	}
	return s != ""
}

// newRepoMemo returns an empty memo of RegistryAllowed's answers (where
// CompileNamed's parameter name hides the package name).
func newRepoMemo() *repoMemo[name.Repository] { return &repoMemo[name.Repository]{} }
