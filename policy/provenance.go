package policy

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"buildguard.dev/buildguard/internal/shorten"
)

// Rule IDs of the provenance checks.
const (
	// RuleUnsigned: signatures.required and no signature was found where
	// signatures.on says it must be.
	RuleUnsigned RuleID = "unsigned"
	// RuleUntrustedSigner: signatures.required and signatures were found,
	// but none verified against signatures.keys or signatures.keyless.
	RuleUntrustedSigner RuleID = "untrusted-signer"
	// RuleMissingProvenance: provenance.required and no verified SLSA
	// provenance attestation names the image's digest.
	RuleMissingProvenance RuleID = "missing-provenance"
	// RuleUnapprovedBuilder: a verified attestation names a builder.id that
	// matches none of provenance.builders.
	RuleUnapprovedBuilder RuleID = "unapproved-builder"
	// RuleUnapprovedSource: a verified attestation names source
	// repositories none of which matches provenance.sources.
	RuleUnapprovedSource RuleID = "unapproved-source"
)

// ErrTrustConfig: the policy's trust settings could not be used (a key or
// trusted root file that cannot be read). It never admits: signatures and
// attestations are then reported as unverified.
const ErrTrustConfig ErrorKind = "trust-config"

// SignaturesOn says where the signatures of a multi-platform image must be.
type SignaturesOn string

const (
	// SignaturesOnIndex: the index digest is signed.
	SignaturesOnIndex SignaturesOn = "index"
	// SignaturesOnEach: every platform's manifest digest is signed.
	SignaturesOnEach SignaturesOn = "each"
	// SignaturesOnEither: the index is signed, or every platform is.
	SignaturesOnEither SignaturesOn = "either"
)

// Signatures configures signature verification with cosign.
type Signatures struct {
	// Required makes an image without a trusted signature a finding
	// (unsigned or untrusted-signer). The default is false: keys and
	// identities are then only recorded.
	Required bool `json:"required,omitempty" yaml:"required,omitempty"`
	// On says where the signatures of a multi-platform image must be:
	// index, each or either. The default is either.
	On SignaturesOn `json:"on,omitempty" yaml:"on,omitempty"`
	// Keys are PEM public keys (ECDSA, RSA, Ed25519) or paths of files
	// holding one.
	Keys []string `json:"keys,omitempty" yaml:"keys,omitempty"`
	// Keyless are the Fulcio certificate identities to trust; a
	// certificate must chain to trustedRoot.
	Keyless []KeylessIdentity `json:"keyless,omitempty" yaml:"keyless,omitempty"`
	// TrustedRoot is the path of a Sigstore trusted_root.json (Fulcio CAs,
	// Rekor keys, CT logs). It is never fetched: buildguard contacts no
	// TUF repository. Required for keyless identities, and for keys unless
	// ignoreTlog is set.
	TrustedRoot string `json:"trustedRoot,omitempty" yaml:"trustedRoot,omitempty"`
	// IgnoreTlog skips the transparency-log proof (Rekor SET). The
	// default is false: the proof is verified offline with the trusted
	// root's Rekor keys.
	IgnoreTlog bool `json:"ignoreTlog,omitempty" yaml:"ignoreTlog,omitempty"`

	// GitHub are the GitHub Actions signers to trust, matched on the
	// claims of their Fulcio certificates (GitHub artifact attestations,
	// and cosign keyless signatures made in GitHub Actions); they need
	// trustedRoot.
	GitHub []GitHubIdentity `json:"github,omitempty" yaml:"github,omitempty"`
	// Notation verifies Notary Project signatures. The default is none.
	Notation *NotationTrust `json:"notation,omitempty" yaml:"notation,omitempty"`
}

// KeylessIdentity matches a Fulcio certificate: its OIDC issuer and its
// subject (SAN), each exactly or by a Go regular expression.
type KeylessIdentity struct {
	Issuer        string `json:"issuer,omitempty" yaml:"issuer,omitempty"`
	IssuerRegExp  string `json:"issuerRegExp,omitempty" yaml:"issuerRegExp,omitempty"`
	Subject       string `json:"subject,omitempty" yaml:"subject,omitempty"`
	SubjectRegExp string `json:"subjectRegExp,omitempty" yaml:"subjectRegExp,omitempty"`
}

func (k KeylessIdentity) String() string {
	iss, sub := k.Issuer, k.Subject
	if k.IssuerRegExp != "" {
		iss = "~" + k.IssuerRegExp
	}
	if k.SubjectRegExp != "" {
		sub = "~" + k.SubjectRegExp
	}
	return sub + " from " + iss
}

// ProvenanceRequirements configures the SLSA provenance checks.
type ProvenanceRequirements struct {
	// Required makes an image without a verified SLSA provenance
	// attestation for its digest a finding (missing-provenance). The
	// default is false.
	Required bool `json:"required,omitempty" yaml:"required,omitempty"`
	// Builders are globs over builder.id, with the syntax of
	// registries.allow ("*" within a path segment, "**" across).
	Builders []string `json:"builders,omitempty" yaml:"builders,omitempty"`
	// Sources are globs over source repositories, written without scheme,
	// ref or ".git": "github.com/acme/*".
	Sources []string `json:"sources,omitempty" yaml:"sources,omitempty"`

	// VSA says which SLSA Verification Summary Attestations satisfy
	// required in place of provenance. The default is none.
	VSA *VSARequirements `json:"vsa,omitempty" yaml:"vsa,omitempty"`
}

// TrustSettings is what a verifier needs from a policy to check
// signatures and attestations. It is plain data; key files and the
// trusted root are read by the verifier, not by package policy.
type TrustSettings struct {
	// Keys are the public keys, inline or by path.
	Keys []TrustedKey
	// Keyless are the certificate identities to trust.
	Keyless []KeylessIdentity
	// TrustedRoot is the path of a Sigstore trusted_root.json, or "".
	TrustedRoot string
	IgnoreTlog  bool
	// Attestations says whether attestations are to be fetched and
	// verified (the policy has provenance settings).
	Attestations bool
	// On is signatures.on.
	On SignaturesOn
	// Fingerprint identifies these settings, for caches of verification
	// results. Settings with the same fingerprint verify alike.
	Fingerprint string

	// GitHub are the GitHub Actions signers to trust, compiled.
	GitHub []GitHubMatcher
	// Notation is the Notation trust configuration, nil without one.
	Notation *NotationTrust
}

// TrustedKey is one public key of signatures.keys.
type TrustedKey struct {
	// PEM is the key, when given inline.
	PEM []byte
	// Path is the file holding it, when given as a path.
	Path string
	// Fingerprint is "sha256:" and the hex SHA-256 of the key's DER
	// (PKIX) form; empty for a path.
	Fingerprint string
}

type provenanceSettings struct {
	required     bool
	on           SignaturesOn
	provRequired bool
	builders     []glob
	sources      []glob
	trust        TrustSettings
	enabled      bool
	vsa          *vsaSettings
}

// compileProvenance validates signatures and provenance.
func compileProvenance(sig Signatures, prov ProvenanceRequirements) (provenanceSettings, error) {
	ps := provenanceSettings{required: sig.Required, on: sig.On, provRequired: prov.Required}
	if ps.on == "" {
		ps.on = SignaturesOnEither
	}
	if ps.on != SignaturesOnIndex && ps.on != SignaturesOnEach && ps.on != SignaturesOnEither {
		return ps, &FieldError{Field: "signatures.on", Msg: fmt.Sprintf("%q is not one of index, each, either", sig.On)}
	}
	h := sha256.New()
	fmt.Fprintf(h, "tlog=%v\x00root=%s\x00", sig.IgnoreTlog, sig.TrustedRoot)
	for i, k := range sig.Keys {
		field := fmt.Sprintf("signatures.keys[%d]", i)
		k = strings.TrimSpace(k)
		if k == "" {
			return ps, &FieldError{Field: field, Msg: "empty: give a PEM public key or the path of a file holding one"}
		}
		tk := TrustedKey{}
		if strings.HasPrefix(k, "-----BEGIN") {
			fp, err := KeyFingerprint([]byte(k))
			if err != nil {
				return ps, &FieldError{Field: field, Msg: err.Error()}
			}
			tk.PEM, tk.Fingerprint = []byte(k), fp
		} else {
			if strings.ContainsAny(k, "\n\r") {
				return ps, &FieldError{Field: field, Msg: "neither a PEM public key (-----BEGIN PUBLIC KEY-----) nor a file path"}
			}
			tk.Path = k
		}
		fmt.Fprintf(h, "key=%s%s\x00", tk.Fingerprint, tk.Path)
		ps.trust.Keys = append(ps.trust.Keys, tk)
	}
	for i, id := range sig.Keyless {
		field := fmt.Sprintf("signatures.keyless[%d]", i)
		if (id.Issuer == "") == (id.IssuerRegExp == "") {
			return ps, &FieldError{Field: field, Msg: "set exactly one of issuer and issuerRegExp"}
		}
		if (id.Subject == "") == (id.SubjectRegExp == "") {
			return ps, &FieldError{Field: field, Msg: "set exactly one of subject and subjectRegExp"}
		}
		for f, re := range map[string]string{"issuerRegExp": id.IssuerRegExp, "subjectRegExp": id.SubjectRegExp} {
			if re == "" {
				continue
			}
			if _, err := regexp.Compile(re); err != nil {
				return ps, &FieldError{Field: field + "." + f, Msg: err.Error()}
			}
		}
		fmt.Fprintf(h, "id=%s\x00%s\x00%s\x00%s\x00", id.Issuer, id.IssuerRegExp, id.Subject, id.SubjectRegExp)
		ps.trust.Keyless = append(ps.trust.Keyless, id)
	}
	if len(sig.Keyless) > 0 && sig.TrustedRoot == "" {
		return ps, &FieldError{Field: "signatures.trustedRoot", Msg: "required with signatures.keyless: the path of a Sigstore trusted_root.json"}
	}
	if len(sig.Keys) > 0 && sig.TrustedRoot == "" && !sig.IgnoreTlog {
		return ps, &FieldError{Field: "signatures.trustedRoot", Msg: "required to verify the transparency-log proof of key signatures; set it, or set ignoreTlog: true"}
	}
	// GitHub signers and Notation.
	for i, g := range sig.GitHub {
		m, err := compileGitHubIdentity(fmt.Sprintf("signatures.github[%d]", i), g)
		if err != nil {
			return ps, err
		}
		fmt.Fprintf(h, "github=%+v\x00", g)
		ps.trust.GitHub = append(ps.trust.GitHub, m)
	}
	if len(sig.GitHub) > 0 && sig.TrustedRoot == "" {
		return ps, &FieldError{Field: "signatures.trustedRoot", Msg: "required with signatures.github: the trusted roots as `gh attestation trusted-root` writes them"}
	}
	if sig.Notation != nil {
		n, err := compileNotation("signatures.notation", sig.Notation, h)
		if err != nil {
			return ps, err
		}
		ps.trust.Notation = n
	}
	if (sig.Required || prov.Required) && len(sig.Keys) == 0 && len(sig.Keyless) == 0 && len(sig.GitHub) == 0 && sig.Notation == nil {
		f := "signatures.required"
		if !sig.Required {
			f = "provenance.required"
		}
		return ps, &FieldError{Field: f, Msg: "needs signatures.keys, keyless, github or notation to verify with"}
	}
	var err error
	if ps.builders, err = compileGlobs("provenance.builders", prov.Builders); err != nil {
		return ps, err
	}
	if ps.sources, err = compileGlobs("provenance.sources", prov.Sources); err != nil {
		return ps, err
	}
	if ps.vsa, err = compileVSA("provenance.vsa", prov.VSA, h); err != nil {
		return ps, err
	}
	ps.trust.TrustedRoot, ps.trust.IgnoreTlog, ps.trust.On = sig.TrustedRoot, sig.IgnoreTlog, ps.on
	ps.trust.Attestations = prov.Required || len(prov.Builders) > 0 || len(prov.Sources) > 0 || prov.VSA != nil
	fmt.Fprintf(h, "att=%v", ps.trust.Attestations)
	ps.trust.Fingerprint = hex.EncodeToString(h.Sum(nil)[:16])
	ps.enabled = sig.Required || len(sig.Keys) > 0 || len(sig.Keyless) > 0 || len(sig.GitHub) > 0 || sig.Notation != nil || ps.trust.Attestations
	return ps, nil
}

// KeyFingerprint returns "sha256:" and the hex SHA-256 of the DER (PKIX)
// form of the PEM public key.
func KeyFingerprint(pemKey []byte) (string, error) {
	b, _ := pem.Decode(pemKey)
	if b == nil {
		return "", fmt.Errorf("not a PEM block")
	}
	if _, err := x509.ParsePKIXPublicKey(b.Bytes); err != nil {
		return "", fmt.Errorf("not a PKIX public key (ECDSA, RSA or Ed25519): %v", err)
	}
	return DERFingerprint(b.Bytes), nil
}

// DERFingerprint returns "sha256:" and the hex SHA-256 of der.
func DERFingerprint(der []byte) string {
	s := sha256.Sum256(der)
	return "sha256:" + hex.EncodeToString(s[:])
}

// NeedsProvenance reports whether the policy verifies signatures or
// attestations, so the engine asks a verifier.
func (p *Policy) NeedsProvenance() bool { return p.prov.enabled }

// Trust returns the settings a verifier checks signatures and
// attestations with.
func (p *Policy) Trust() TrustSettings { return p.prov.trust }

// BuilderApproved reports whether builder.id matches provenance.builders;
// true when the list is empty.
func (p *Policy) builderApproved(id string) bool {
	if len(p.prov.builders) == 0 {
		return true
	}
	_, ok := matchAny(p.prov.builders, id)
	return ok
}

func (p *Policy) sourceApproved(sources []string) bool {
	if len(p.prov.sources) == 0 {
		return true
	}
	for _, s := range sources {
		if _, ok := matchAny(p.prov.sources, NormalizeSource(s)); ok {
			return true
		}
	}
	return false
}

// NormalizeSource reduces a source URI as SLSA provenance writes it
// ("git+https://github.com/acme/shop@refs/heads/main") to the form
// provenance.sources matches: "github.com/acme/shop".
func NormalizeSource(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	if i := strings.IndexAny(s, "@#?"); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSuffix(strings.TrimSuffix(s, "/"), ".git")
	return s
}

// provenanceFindings judges the signatures and attestations verified for
// img under p. Every platform is judged: a multi-platform image with one
// unsigned child is unsigned (unless its index is signed and
// signatures.on allows that).
func (p *Policy) provenanceFindings(c Container, img *Image, repo string, now time.Time) []Finding {
	if !p.prov.enabled || img == nil {
		return nil
	}
	pv := c.Provenance[p.name]
	if pv == nil {
		pv = &Provenance{}
	}
	if pv.Err != nil {
		switch pv.Err.Kind {
		case ErrForbiddenAddress:
			repo := registryOf(c.Image)
			if c.Ref != nil {
				repo = c.Ref.Context().Name()
			}
			return []Finding{p.forbidden(registryOf(c.Image), pv.Err, map[string]any{"repository": repo})}
		case ErrTrustConfig, ErrInvalidImage, ErrTooLarge, ErrNotFound:
			// Nothing valid could be read: judged as no signatures or
			// attestations, the error given as evidence. What a registry
			// that answered served is never an outage.
		default:
			ev := map[string]any{"reason": string(pv.Err.Kind), "registry": registryOf(c.Image), "error": pv.Err.Message}
			return []Finding{p.finding(RuleRegistryUnavailable, SeverityMedium,
				fmt.Sprintf("signatures and attestations of %s could not be fetched in time (%s); failurePolicy is %s", c.Image, pv.Err.Kind, p.failure), ev)}
		}
	}
	var out []Finding
	if p.prov.required {
		out = append(out, p.signatureFindings(pv, img)...)
	}
	out = append(out, p.attestationFindings(pv, img, repo, now)...)
	return out
}

// What ImageVerdict.Checks may list.
const (
	CheckSignatures = "signatures"
	CheckProvenance = "provenance"
)

// checks is ImageVerdict.Checks of an image whose signatures and
// attestations the policy judged.
func (p *Policy) checks() []string {
	out := []string{}
	if p.prov.required {
		out = append(out, CheckSignatures)
	}
	if p.prov.trust.Attestations {
		out = append(out, CheckProvenance)
	}
	return out
}

func registryOf(image string) string {
	if i := strings.IndexByte(image, '/'); i > 0 && strings.ContainsAny(image[:i], ".:") {
		return image[:i]
	}
	return "index.docker.io"
}

// expected lists what the policy trusts, for evidence.
func (p *Policy) expectedSigners() []string {
	var out []string
	for _, k := range p.prov.trust.Keys {
		if k.Fingerprint != "" {
			out = append(out, "key "+k.Fingerprint)
		} else {
			out = append(out, "key file "+k.Path)
		}
	}
	for _, id := range p.prov.trust.Keyless {
		out = append(out, "keyless "+id.String())
	}
	for _, g := range p.prov.trust.GitHub {
		out = append(out, g.Identity.String())
	}
	if n := p.prov.trust.Notation; n != nil {
		out = append(out, n.describe()...)
	}
	return out
}

// unsignedPlatforms returns the digests (with their platforms) that lack
// a verified signature, as signatures.on requires; none when satisfied.
func (p *Policy) unsignedTargets(pv *Provenance, img *Image) []string {
	verified := map[string]bool{}
	for _, s := range pv.Signatures {
		if s.Verified {
			verified[s.On] = true
		}
	}
	if !img.Index {
		if verified[img.Digest] {
			return nil
		}
		return []string{img.Digest}
	}
	var children []string
	for _, pl := range img.Platforms {
		if !verified[pl.Digest] {
			children = append(children, pl.Digest+" ("+pl.Platform+")")
		}
	}
	switch p.prov.on {
	case SignaturesOnIndex:
		if verified[img.Digest] {
			return nil
		}
		return []string{img.Digest + " (index)"}
	case SignaturesOnEach:
		return children
	default:
		if verified[img.Digest] || len(children) == 0 {
			return nil
		}
		return children
	}
}

func (p *Policy) signatureFindings(pv *Provenance, img *Image) []Finding {
	missing := p.unsignedTargets(pv, img)
	if len(missing) == 0 {
		return p.loggedSignatureFindings(pv, img)
	}
	onMissing := map[string]bool{}
	for _, m := range missing {
		onMissing[strings.Fields(m)[0]] = true
	}
	var found, errs, types, github []string
	n := 0
	for _, s := range pv.Signatures {
		if !onMissing[s.On] && s.On != "" {
			continue
		}
		n++
		found = appendUnique(found, signatureSigner(s))
		types = appendUnique(types, signatureType(s))
		if s.GitHub != nil {
			github = appendUnique(github, s.GitHub.String())
		}
		if s.Error != "" {
			errs = appendUnique(errs, s.Error)
		}
	}
	ev := map[string]any{
		"unsignedDigests": missing,
		"expected":        p.expectedSigners(),
		"signaturesOn":    string(p.prov.on),
	}
	if len(types) > 0 {
		ev["signatureTypes"] = types
	}
	if len(github) > 0 {
		ev["github"] = github
	}
	if rv := p.notationRevocation(); rv != "" {
		ev["notationRevocation"] = rv
	}
	if pv.Err != nil {
		errs = appendUnique(errs, pv.Err.Message)
	}
	if n == 0 && pv.Err == nil {
		return []Finding{p.finding(RuleUnsigned, SeverityHigh,
			fmt.Sprintf("no signature found for %s (signatures.on %s); an approved pipeline signs what it builds", strings.Join(missing, ", "), p.prov.on), ev)}
	}
	ev["signers"] = found
	if len(errs) > 0 {
		ev["errors"] = errs
	}
	ev["signatures"] = n
	msg := fmt.Sprintf("no trusted signature for %s: found %d signature(s) by %s, none from %s",
		strings.Join(missing, ", "), n, strings.Join(found, ", "), strings.Join(p.expectedSigners(), ", "))
	if n == 0 {
		msg = fmt.Sprintf("no trusted signature for %s: none from %s", strings.Join(missing, ", "), strings.Join(p.expectedSigners(), ", "))
	}
	if len(errs) > 0 {
		msg += " (" + strings.Join(errs, "; ") + ")"
	}
	return []Finding{p.finding(RuleUntrustedSigner, SeverityHigh, msg, ev)}
}

// signatureType is "cosign" or "notation (jws)".
func signatureType(s Signature) string {
	switch {
	case s.Type == "notation" && s.Notation != nil && s.Notation.Envelope != "":
		return "notation (" + s.Notation.Envelope + ")"
	case s.Type != "":
		return s.Type
	}
	return "cosign"
}

// signatureSigner names who made s, whether or not it verified.
func signatureSigner(s Signature) string {
	if s.Notation != nil && s.Notation.Signer != "" {
		return "certificate " + s.Notation.Signer
	}
	return signerOf(s.KeyFingerprint, s.Issuer, s.Subject)
}

func (c GitHubClaims) String() string {
	return fmt.Sprintf("%s@%s by %s on %s runner", c.SourceRepository, c.SourceRef, c.SignerWorkflow, c.RunnerEnvironment)
}

// loggedSignatureFindings warns about digests whose only verified
// signatures are Notary Project signatures that passed with failures
// their trust policy's verification level only logs (permissive: expiry,
// revocation, timestamp; audit: authenticity too). Notation logs them;
// buildguard maps "log" onto a warning: never more than warn, whatever
// rules.untrusted-signer says, and ignore stays ignore.
func (p *Policy) loggedSignatureFindings(pv *Provenance, img *Image) []Finding {
	clean := map[string]bool{}
	logged := map[string][]Signature{}
	for _, s := range pv.Signatures {
		if !s.Verified {
			continue
		}
		if s.Notation != nil && len(s.Notation.Logged) > 0 {
			logged[s.On] = append(logged[s.On], s)
		} else {
			clean[s.On] = true
		}
	}
	var digests, failures, signers, policies, levels []string
	for _, d := range sortedSigKeys(logged) {
		if clean[d] || (img.Index && clean[img.Digest] && d != img.Digest) {
			continue
		}
		digests = append(digests, d)
		for _, s := range logged[d] {
			for _, l := range s.Notation.Logged {
				failures = appendUnique(failures, l)
			}
			signers = appendUnique(signers, signatureSigner(s))
			policies = appendUnique(policies, s.Notation.TrustPolicy)
			levels = appendUnique(levels, s.Notation.VerificationLevel)
		}
	}
	if len(digests) == 0 {
		return nil
	}
	ev := map[string]any{"digests": digests, "signatureTypes": []string{"notation"}, "signers": signers, "logged": failures,
		"trustPolicies": policies, "verificationLevels": levels, "notationRevocation": p.notationRevocation()}
	f := p.finding(RuleUntrustedSigner, SeverityMedium,
		fmt.Sprintf("the Notary Project signature of %s passed only because trust policy %s (level %s) logs what failed: %s",
			strings.Join(digests, ", "), strings.Join(policies, ", "), strings.Join(levels, ", "), strings.Join(failures, "; ")), ev)
	if f.Action == ActionDeny {
		f.Action = ActionWarn
	}
	return []Finding{f}
}

// notationRevocation is how the policy checks the revocation of Notary
// Project signing certificates, for evidence: "crl" (its CRL files) or
// "off"; "" without signatures.notation.
func (p *Policy) notationRevocation() string {
	switch n := p.prov.trust.Notation; {
	case n == nil:
		return ""
	case n.Revocation.Off:
		return "off"
	}
	return "crl"
}

func sortedSigKeys(m map[string][]Signature) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func signerOf(fp, issuer, subject string) string {
	switch {
	case subject != "":
		return subject + " from " + issuer
	case fp != "":
		return "key " + fp
	}
	return "unknown signer"
}

// attestationFindings: each platform (or the index) needs a verified
// attestation whose subject names it, from an approved builder and an
// approved source, or a VSA that vouches for it. Builder, source and VSAs
// are judged on verified attestations even when provenance is not
// required.
func (p *Policy) attestationFindings(pv *Provenance, img *Image, repo string, now time.Time) []Finding {
	if !p.prov.trust.Attestations {
		return nil
	}
	targets := []string{img.Digest}
	if img.Index {
		targets = targets[:0]
		for _, pl := range img.Platforms {
			targets = append(targets, pl.Digest)
		}
	}
	var out []Finding
	var missing []string
	badBuilders, badSources := map[string][]string{}, map[string][]string{}
	vsaBad := map[string][]vsaVerdict{}
	for _, t := range targets {
		ok, about := false, false
		for _, a := range pv.Attestations {
			if !a.Verified || !a.IsProvenance() || !(covers(a, t) || (img.Index && covers(a, img.Digest))) {
				continue
			}
			about = true
			bOK, sOK := p.builderApproved(a.BuilderID), p.sourceApproved(a.Sources)
			if !bOK {
				badBuilders[a.BuilderID] = appendUnique(badBuilders[a.BuilderID], t)
			}
			if !sOK {
				key := strings.Join(a.Sources, ", ")
				badSources[key] = appendUnique(badSources[key], t)
			}
			if bOK && sOK {
				ok = true
			}
		}
		vouched, bad := p.vsaResults(pv, repo, img, t, now)
		if len(bad) > 0 {
			vsaBad[t] = bad
		}
		if !ok && !about && !vouched && len(bad) == 0 {
			missing = append(missing, t)
		}
	}
	for _, b := range sortedKeys(badBuilders) {
		ev := map[string]any{"builderID": b, "digests": badBuilders[b], "expected": globSources(p.prov.builders)}
		out = append(out, p.finding(RuleUnapprovedBuilder, SeverityHigh,
			fmt.Sprintf("provenance says %s was built by %q, which matches no provenance.builders (%s)", strings.Join(badBuilders[b], ", "), b, strings.Join(globSources(p.prov.builders), ", ")), ev))
	}
	for _, s := range sortedKeys(badSources) {
		srcs := []string{}
		if s != "" {
			srcs = strings.Split(s, ", ")
		}
		ev := map[string]any{"sources": srcs, "digests": badSources[s], "expected": globSources(p.prov.sources)}
		what := "names no source repository"
		if len(srcs) > 0 {
			what = "names source " + s
		}
		out = append(out, p.finding(RuleUnapprovedSource, SeverityHigh,
			fmt.Sprintf("provenance of %s %s, which matches no provenance.sources (%s)", strings.Join(badSources[s], ", "), what, strings.Join(globSources(p.prov.sources), ", ")), ev))
	}
	out = append(out, p.vsaFindings(vsaBad)...)
	if len(missing) > 0 && p.prov.provRequired {
		var found, errs []string
		for _, a := range pv.Attestations {
			desc := fmt.Sprintf("%s for %s", a.PredicateType, strings.Join(a.SubjectDigests, ","))
			if a.VSA != nil {
				desc += " by verifier " + a.VSA.VerifierID
			}
			found = appendUnique(found, desc)
			if a.Error != "" {
				errs = appendUnique(errs, a.Error)
			}
		}
		ev := map[string]any{"digests": missing, "attestations": found, "expected": p.expectedSigners()}
		if len(errs) > 0 {
			ev["errors"] = errs
		}
		if p.prov.vsa != nil {
			ev["vsaVerifiers"] = globSources(p.prov.vsa.verifiers)
		}
		msg := fmt.Sprintf("no verified SLSA provenance for %s", strings.Join(missing, ", "))
		if p.prov.vsa != nil {
			msg = fmt.Sprintf("no verified SLSA provenance and no verification summary from %s for %s", strings.Join(globSources(p.prov.vsa.verifiers), ", "), strings.Join(missing, ", "))
		}
		if len(pv.Attestations) > 0 {
			msg += fmt.Sprintf(": %d attestation(s) found, none verified for it (%s)", len(pv.Attestations), strings.Join(append(found, errs...), "; "))
		}
		out = append(out, p.finding(RuleMissingProvenance, SeverityHigh, msg, ev))
	}
	return out
}

func covers(a Attestation, digest string) bool {
	for _, d := range a.SubjectDigests {
		if d == digest {
			return true
		}
	}
	return false
}

func globSources(gs []glob) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.src
	}
	return out
}

func sortedKeys(m map[string][]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// provenanceSummary is a provenance finding in a few words.
func provenanceSummary(rule RuleID, ev map[string]any) string {
	switch rule {
	case RuleUnsigned:
		return fmt.Sprintf("no signature (signatures.on %v)", ev["signaturesOn"])
	case RuleUntrustedSigner:
		if logged, ok := ev["logged"].([]string); ok && len(logged) > 0 {
			return shorten.Text("notation signature passed with logged failures: "+strings.Join(logged, "; "), 90)
		}
		return fmt.Sprintf("%v signature(s), none trusted", ev["signatures"])
	case RuleMissingProvenance:
		return "no verified SLSA provenance"
	case RuleUnapprovedBuilder:
		return shorten.Text(fmt.Sprintf("builder %v not approved", ev["builderID"]), 90)
	case RuleUnapprovedSource:
		return shorten.Text(fmt.Sprintf("source %v not approved", strings.Join(ev["sources"].([]string), ", ")), 90)
	case RuleVSAFailed, RuleVSAStale:
		return shorten.Text(fmt.Sprintf("VSA of %v: %v", ev["verifier"], ev["reason"]), 90)
	case RuleInconsistentCreatedTime:
		if ev["reason"] == "created-before-build" {
			return shorten.Text(fmt.Sprintf("created %v, before node %v built it", ev["created"], ev["node"]), 90)
		}
		return shorten.Text(fmt.Sprintf("created %v, before its step %v", ev["created"], ev["stepIndex"]), 90)
	}
	return string(rule)
}
