package policy

import (
	"fmt"
	"hash"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// Rule IDs of SLSA Verification Summary Attestations.
const (
	// RuleVSAFailed: the newest VSA about the image from a verifier in
	// provenance.vsa.verifiers does not vouch for it: its result is
	// FAILED, its resourceUri names another image, or its verified levels
	// are below provenance.vsa.minLevels.
	RuleVSAFailed RuleID = "vsa-failed"
	// RuleVSAStale: the newest VSA about the image from a verifier in
	// provenance.vsa.verifiers passed, but was verified longer than
	// provenance.vsa.maxAge ago.
	RuleVSAStale RuleID = "vsa-stale"
)

// DefaultVSAMaxAge is provenance.vsa.maxAge when the policy leaves it out.
const DefaultVSAMaxAge = 7 * 24 * time.Hour

// VSARequirements says which SLSA Verification Summary Attestations
// (https://slsa.dev/verification_summary/v1) satisfy provenance.required
// in place of provenance: signed by a key or identity of signatures,
// naming the image, PASSED, at or above the levels, recent enough.
type VSARequirements struct {
	// Verifiers are globs over verifier.id, with the syntax of
	// registries.allow. Required.
	Verifiers []string `json:"verifiers" yaml:"verifiers"`
	// MinLevels are the levels the VSA must state in verifiedLevels, each
	// at or above ("SLSA_BUILD_LEVEL_3" is met by SLSA_BUILD_LEVEL_3 or
	// SLSA_BUILD_LEVEL_4). The default is none: PASSED is enough.
	MinLevels []string `json:"minLevels,omitempty" yaml:"minLevels,omitempty"`
	// MaxAge is how long ago timeVerified may be. The default is 168h.
	MaxAge Duration `json:"maxAge,omitempty" yaml:"maxAge,omitempty"`
}

type vsaSettings struct {
	verifiers []glob
	levels    []slsaLevel
	maxAge    time.Duration
}

// slsaLevel is a level such as SLSA_BUILD_LEVEL_3: a track and a number.
type slsaLevel struct {
	src   string
	track string
	n     int
}

var slsaLevelRE = regexp.MustCompile(`^([A-Z][A-Z0-9_]*)_LEVEL_([0-9]{1,3})$`)

func parseSLSALevel(s string) (slsaLevel, bool) {
	m := slsaLevelRE.FindStringSubmatch(strings.ToUpper(strings.TrimSpace(s)))
	if m == nil {
		return slsaLevel{}, false
	}
	n, _ := strconv.Atoi(m[2])
	return slsaLevel{src: s, track: m[1], n: n}, true
}

func compileVSA(field string, v *VSARequirements, h hash.Hash) (*vsaSettings, error) {
	if v == nil {
		return nil, nil
	}
	if len(v.Verifiers) == 0 {
		return nil, &FieldError{Field: field + ".verifiers", Msg: "required: globs over the verifier.id of the VSAs to trust"}
	}
	vs := &vsaSettings{maxAge: v.MaxAge.Duration}
	var err error
	if vs.verifiers, err = compileGlobs(field+".verifiers", v.Verifiers); err != nil {
		return nil, err
	}
	for i, l := range v.MinLevels {
		lv, ok := parseSLSALevel(l)
		if !ok {
			return nil, &FieldError{Field: fmt.Sprintf("%s.minLevels[%d]", field, i), Msg: fmt.Sprintf("%q is not a level such as SLSA_BUILD_LEVEL_3", l)}
		}
		vs.levels = append(vs.levels, lv)
	}
	if vs.maxAge < 0 {
		return nil, &FieldError{Field: field + ".maxAge", Msg: "must not be negative"}
	}
	if vs.maxAge == 0 {
		vs.maxAge = DefaultVSAMaxAge
	}
	fmt.Fprintf(h, "vsa=%v\x00", v.Verifiers)
	return vs, nil
}

// ParseResourceURI reads a VSA's resourceUri as the repository
// ("registry/repository", as name.Repository.Name gives it) and the
// digest it names. It accepts "REPO@sha256:…" with or without a scheme
// (oci://, docker://, https://) and the purl types oci and docker
// ("pkg:oci/shop@sha256%3A…?repository_url=ghcr.io/acme").
func ParseResourceURI(s string) (repo, digest string, err error) {
	if len(s) > 2048 {
		return "", "", fmt.Errorf("resourceUri is %d bytes long", len(s))
	}
	if strings.HasPrefix(s, "pkg:") {
		return parsePurl(s)
	}
	for _, scheme := range []string{"oci://", "docker://", "https://", "http://"} {
		s = strings.TrimPrefix(s, scheme)
	}
	d, err := name.NewDigest(s)
	if err != nil {
		return "", "", fmt.Errorf("resourceUri %q names no image by digest: %v", s, err)
	}
	return d.Context().Name(), d.DigestStr(), nil
}

// parsePurl reads pkg:oci/NAME@DIGEST?repository_url=REGISTRY/NAMESPACE
// and pkg:docker/NAMESPACE/NAME@DIGEST?repository_url=REGISTRY.
func parsePurl(s string) (string, string, error) {
	rest := strings.TrimPrefix(s, "pkg:")
	typ, rest, ok := strings.Cut(rest, "/")
	if !ok || (typ != "oci" && typ != "docker") {
		return "", "", fmt.Errorf("resourceUri %q is not a pkg:oci or pkg:docker purl", s)
	}
	rest, _, _ = strings.Cut(rest, "#")
	path, query, _ := strings.Cut(rest, "?")
	p, version, ok := strings.Cut(path, "@")
	if !ok {
		return "", "", fmt.Errorf("resourceUri %q has no version (digest)", s)
	}
	digest, err := url.PathUnescape(version)
	if err != nil {
		return "", "", fmt.Errorf("resourceUri %q: %v", s, err)
	}
	p, err = url.PathUnescape(p)
	if err != nil {
		return "", "", fmt.Errorf("resourceUri %q: %v", s, err)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return "", "", fmt.Errorf("resourceUri %q: %v", s, err)
	}
	ref := p
	switch base := strings.TrimSuffix(q.Get("repository_url"), "/"); {
	case typ == "oci" && base != "":
		ref = base + "/" + p[strings.LastIndex(p, "/")+1:]
	case typ == "oci":
		return "", "", fmt.Errorf("resourceUri %q: a pkg:oci purl needs repository_url", s)
	case base != "":
		ref = base + "/" + p
	}
	d, err := name.NewDigest(ref + "@" + digest)
	if err != nil {
		return "", "", fmt.Errorf("resourceUri %q names no image by digest: %v", s, err)
	}
	return d.Context().Name(), d.DigestStr(), nil
}

// vsaVerdict is what one VSA says about one digest under the policy.
type vsaVerdict struct {
	a       Attestation
	rule    RuleID // "" when it vouches for the digest
	problem string
}

// judgeVSA checks one verified VSA about target (a platform digest, or
// the index digest of img) of an image in repository repo.
func (vs *vsaSettings) judgeVSA(a Attestation, repo string, img *Image, now time.Time) vsaVerdict {
	v := a.VSA
	r, d, err := ParseResourceURI(v.ResourceURI)
	switch {
	case v.Result != "PASSED":
		return vsaVerdict{a, RuleVSAFailed, fmt.Sprintf("verificationResult is %q", v.Result)}
	case err != nil:
		return vsaVerdict{a, RuleVSAFailed, err.Error()}
	case r != repo:
		return vsaVerdict{a, RuleVSAFailed, fmt.Sprintf("resourceUri names repository %s, not %s", r, repo)}
	case !covers(a, d) || !(d == img.Digest || imageHasDigest(img, d)):
		return vsaVerdict{a, RuleVSAFailed, fmt.Sprintf("resourceUri names digest %s, not this image's", d)}
	}
	if missing := vs.missingLevels(v.VerifiedLevels); len(missing) > 0 {
		return vsaVerdict{a, RuleVSAFailed, fmt.Sprintf("verifiedLevels %v do not reach %s", v.VerifiedLevels, strings.Join(missing, ", "))}
	}
	switch {
	case v.TimeVerified.IsZero():
		return vsaVerdict{a, RuleVSAStale, "no timeVerified"}
	case now.Sub(v.TimeVerified) > vs.maxAge:
		return vsaVerdict{a, RuleVSAStale, fmt.Sprintf("verified %s ago (%s), longer than provenance.vsa.maxAge %s",
			human(now.Sub(v.TimeVerified).Round(time.Second)), v.TimeVerified.UTC().Format(time.RFC3339), human(vs.maxAge))}
	}
	return vsaVerdict{a: a}
}

func imageHasDigest(img *Image, d string) bool {
	for _, pl := range img.Platforms {
		if pl.Digest == d {
			return true
		}
	}
	return false
}

// missingLevels are the required levels verified does not reach.
func (vs *vsaSettings) missingLevels(verified []string) []string {
	var out []string
	for _, want := range vs.levels {
		ok := false
		for _, got := range verified {
			if l, valid := parseSLSALevel(got); valid && l.track == want.track && l.n >= want.n {
				ok = true
			}
		}
		if !ok {
			out = append(out, want.src)
		}
	}
	return out
}

// vsaResults judges the VSAs about target by verifier: of each verifier
// in provenance.vsa.verifiers, the newest VSA (by timeVerified) decides.
// It reports whether one vouches for target and, when none does or a
// trusted verifier's newest says FAILED, the verdicts that do not.
func (p *Policy) vsaResults(pv *Provenance, repo string, img *Image, target string, now time.Time) (bool, []vsaVerdict) {
	vs := p.prov.vsa
	if vs == nil {
		return false, nil
	}
	newest := map[string]Attestation{}
	for _, a := range pv.Attestations {
		if !a.Verified || a.VSA == nil || !(covers(a, target) || (img.Index && covers(a, img.Digest))) {
			continue
		}
		if _, ok := matchAny(vs.verifiers, a.VSA.VerifierID); !ok {
			continue
		}
		if cur, ok := newest[a.VSA.VerifierID]; !ok || a.VSA.TimeVerified.After(cur.VSA.TimeVerified) {
			newest[a.VSA.VerifierID] = a
		}
	}
	ids := make([]string, 0, len(newest))
	for id := range newest {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	vouched := false
	var bad []vsaVerdict
	for _, id := range ids {
		v := vs.judgeVSA(newest[id], repo, img, now)
		if v.rule == "" {
			vouched = true
			continue
		}
		bad = append(bad, v)
	}
	if vouched {
		// Another trusted verifier vouching does not cancel a FAILED.
		var failed []vsaVerdict
		for _, v := range bad {
			if v.a.VSA.Result != "PASSED" {
				failed = append(failed, v)
			}
		}
		bad = failed
	}
	return vouched, bad
}

// vsaFindings turns the verdicts of every target into findings, one per
// rule, verifier and problem.
func (p *Policy) vsaFindings(bad map[string][]vsaVerdict) []Finding {
	type key struct {
		rule             RuleID
		verifier, reason string
	}
	groups := map[key][]string{}
	first := map[key]vsaVerdict{}
	for target, vs := range bad {
		for _, v := range vs {
			k := key{v.rule, v.a.VSA.VerifierID, v.problem}
			groups[k] = append(groups[k], target)
			if _, ok := first[k]; !ok {
				first[k] = v
			}
		}
	}
	keys := make([]key, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].rule != keys[j].rule {
			return keys[i].rule < keys[j].rule
		}
		if keys[i].verifier != keys[j].verifier {
			return keys[i].verifier < keys[j].verifier
		}
		return keys[i].reason < keys[j].reason
	})
	var out []Finding
	for _, k := range keys {
		ds := groups[k]
		sort.Strings(ds)
		v := first[k].a.VSA
		ev := map[string]any{"verifier": v.VerifierID, "verifiedLevels": append([]string{}, v.VerifiedLevels...), "verificationResult": v.Result,
			"resourceUri": v.ResourceURI, "digests": ds, "reason": k.reason, "signer": signerOf(first[k].a.KeyFingerprint, first[k].a.Issuer, first[k].a.Subject)}
		if !v.TimeVerified.IsZero() {
			ev["timeVerified"] = v.TimeVerified.UTC().Format(time.RFC3339)
		}
		if len(p.prov.vsa.levels) > 0 {
			var want []string
			for _, l := range p.prov.vsa.levels {
				want = append(want, l.src)
			}
			ev["minLevels"] = want
		}
		ev["maxAge"] = human(p.prov.vsa.maxAge)
		verb := "does not vouch for"
		if k.rule == RuleVSAStale {
			verb = "is too old to vouch for"
		}
		out = append(out, p.finding(k.rule, SeverityHigh,
			fmt.Sprintf("the verification summary of verifier %s %s %s: %s", v.VerifierID, verb, strings.Join(ds, ", "), k.reason), ev))
	}
	return out
}
