package policy

import (
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// Facts is everything Decide needs to know about one workload at one
// moment. Gathering facts is the caller's business (see package engine);
// Decide only reads them.
type Facts struct {
	// Now is the time of admission.
	Now time.Time
	// Namespace is the workload's namespace.
	Namespace string
	// NamespaceMode is the value of the namespace's buildguard.dev/mode
	// label, or "" when there is none.
	NamespaceMode string
	// Containers lists every container of the pod spec: containers,
	// initContainers and ephemeralContainers.
	Containers []Container
	// HostPaths are the pod's hostPath volumes.
	HostPaths []HostPathVolume
	// Exceptions apply besides the policy's own, such as the
	// BuildPolicyExceptions of the namespace.
	Exceptions Exceptions
	// Change describes the admitted change, for change control.
	Change ChangeFacts
}

// ContainerKind says which list of the pod spec a container is in.
type ContainerKind string

const (
	KindContainer          ContainerKind = "container"
	KindInitContainer      ContainerKind = "initContainer"
	KindEphemeralContainer ContainerKind = "ephemeralContainer"
)

// Container is one container of a pod spec and what is known of its image.
type Container struct {
	Name  string
	Kind  ContainerKind
	Image string // as written in the pod spec
	// Ref is Image parsed, when the caller has parsed it already; nil
	// makes Decide parse Image itself.
	Ref        name.Reference
	PullPolicy string // Always, IfNotPresent, Never, or "" for the default
	Mounts     []Mount
	// Resolved is the image as found in its registry; nil when it was not
	// looked up (unapproved registry, invalid reference) or the lookup
	// failed (see Err).
	Resolved *Image
	// Err is why the lookup failed, or nil.
	Err *ResolveError
	// Builds are the builds of the image that nodes reported, with their
	// nodes' connections around them.
	Builds []BuildEvidence
	// Provenance holds what was verified of the image's signatures and
	// attestations, per policy name ("" for a policy file), for the
	// policies that ask for it.
	Provenance map[string]*Provenance
}

// Provenance is what verification found for one image under one policy's
// trust settings (keys, keyless identities, trusted root).
type Provenance struct {
	// Signatures are the signatures found, verified or not, on the image's
	// digest and, for an index, on its children.
	Signatures []Signature
	// Attestations are the in-toto attestations found, verified or not.
	Attestations []Attestation
	// Err is set when verification could not run (the registry could not
	// be asked, say); it follows failurePolicy like a lookup failure.
	Err *ResolveError
}

// Signature is one signature and what verifying it showed.
type Signature struct {
	// On is the digest the signature signs: the index's or a child's.
	On       string
	Platform string // of the child it signs, when it signs one
	// Verified is true when it verified against one of the policy's keys
	// or keyless identities, with its transparency-log proof unless the
	// policy ignores the log.
	Verified bool
	// KeyFingerprint is the SHA-256 of the public key that verified it (or
	// of the key in its certificate).
	KeyFingerprint string
	// Issuer and Subject identify a keyless signer (Fulcio certificate).
	Issuer, Subject string
	// Source says where it was found: "tag" (sha256-….sig), "referrers"
	// (OCI 1.1) or "bundle" (Sigstore bundle v0.3).
	Source string
	// Error says why it did not verify.
	Error string

	// Type is what made it: "cosign" (cosign signatures and Sigstore
	// bundles; the default when empty) or "notation" (Notary Project).
	Type string
	// SignedAt is when a transparency log recorded the signature or a
	// timestamping authority countersigned it, both verified against the
	// trusted root; zero when neither was verified. It is a time the
	// image provably existed.
	SignedAt time.Time
	// SignedAtSource says which: TimeSourceTransparencyLog or
	// TimeSourceTimestampAuthority.
	SignedAtSource string
	// GitHub holds the GitHub Actions claims of a Fulcio certificate.
	GitHub *GitHubClaims
	// Notation says how a Notary Project signature was verified.
	Notation *NotationResult
}

// GitHubClaims are what a Fulcio certificate issued to a GitHub Actions
// workflow says about it, from its extensions.
type GitHubClaims struct {
	// SourceRepository is the repository the workflow ran for
	// ("https://github.com/acme/shop").
	SourceRepository string
	// SourceRef is the git ref it ran on ("refs/heads/main").
	SourceRef string
	// SignerWorkflow is the workflow that signed, with its ref: the
	// certificate's subject ("https://github.com/acme/shared/.github/workflows/build.yml@refs/tags/v1").
	SignerWorkflow string
	// RunnerEnvironment is "github-hosted" or "self-hosted".
	RunnerEnvironment string
}

// NotationResult is how a Notary Project signature was verified.
type NotationResult struct {
	// Envelope is "jws" or "cose".
	Envelope string
	// TrustPolicy names the trust policy that applied.
	TrustPolicy string
	// VerificationLevel is strict, permissive or audit.
	VerificationLevel string
	// Revocation is "crl" (checked against the policy's CRL files) or
	// "off".
	Revocation string
	// Logged are the checks that failed but that the verification level
	// only logs ("expiry: …"): the signature counts as verified, and the
	// failure is a warning.
	Logged []string
	// Signer is the subject of the signing certificate.
	Signer string
}

// Attestation is one in-toto statement with SLSA provenance.
type Attestation struct {
	Verified      bool
	PredicateType string
	BuilderID     string
	// Sources are the source repositories it names (v0.2
	// invocation.configSource.uri and materials, v1 externalParameters and
	// resolvedDependencies).
	Sources []string
	// SubjectDigests are the digests of the statement's subjects.
	SubjectDigests []string
	// FinishedOn is the attested end of the build; zero when unknown.
	FinishedOn     time.Time
	KeyFingerprint string
	Issuer         string
	Subject        string
	Source         string
	Error          string

	// SignedAt and SignedAtSource are as for a Signature: when the
	// attestation was provably signed, from a verified transparency-log
	// entry or RFC 3161 timestamp.
	SignedAt       time.Time
	SignedAtSource string
	// GitHub holds the GitHub Actions claims of its Fulcio certificate.
	GitHub *GitHubClaims
	// VSA is the summary of a SLSA Verification Summary Attestation
	// (PredicateType VSAv1); nil for provenance.
	VSA *VSA
}

// IsProvenance reports whether a is SLSA provenance.
func (a Attestation) IsProvenance() bool {
	return a.PredicateType == PredicateSLSAv02 || a.PredicateType == PredicateSLSAv1
}

// Predicate types of the attestations policies judge.
const (
	PredicateSLSAv02 = "https://slsa.dev/provenance/v0.2"
	PredicateSLSAv1  = "https://slsa.dev/provenance/v1"
	PredicateVSAv1   = "https://slsa.dev/verification_summary/v1"
)

// VSA is what a SLSA Verification Summary Attestation says.
type VSA struct {
	// VerifierID is verifier.id.
	VerifierID string
	// TimeVerified is timeVerified; zero when absent.
	TimeVerified time.Time
	// ResourceURI is resourceUri: what was verified.
	ResourceURI string
	// Result is verificationResult: "PASSED" or "FAILED".
	Result string
	// VerifiedLevels are verifiedLevels ("SLSA_BUILD_LEVEL_3").
	VerifiedLevels []string
	// PolicyURI is policy.uri.
	PolicyURI string
}

// Mount is a volume mount of a container.
type Mount struct {
	Volume  string
	SubPath string
}

// HostPathVolume is a pod volume backed by a path on the node.
type HostPathVolume struct {
	Volume string
	Path   string
}

// Image is an image as its registry describes it.
type Image struct {
	// Digest is the digest of the manifest or index the reference names.
	Digest string
	// Index is true for a multi-platform image index.
	Index bool
	// Platforms has one entry for a single image, one per child for an
	// index (attestation manifests excluded).
	Platforms []Platform
}

// Platform is one image manifest and what policy judges of its config.
// The config's labels are not kept: no rule reads them, and images
// carry dozens of them, which would be most of a cached image's memory.
type Platform struct {
	// Platform is "os/arch[/variant]", or "" when the manifest is not part
	// of an index.
	Platform string
	Digest   string // manifest digest
	// ConfigDigest is the Docker image ID. It names the config, and so the
	// history and run config: analyses are remembered by it.
	ConfigDigest string
	Created      time.Time
	History      []History
	// Config is what the image runs and its environment (config Env,
	// Entrypoint, Cmd, WorkingDir), judged like a build step.
	Config RunConfig
}

// History is one entry of an image config's history: one Dockerfile step.
type History struct {
	Created    time.Time
	CreatedBy  string
	EmptyLayer bool
}

// ErrorKind classifies a failed image lookup.
type ErrorKind string

const (
	// ErrNotFound: the registry answered that the tag, digest or
	// repository does not exist.
	ErrNotFound ErrorKind = "not-found"
	// ErrUnavailable: the registry could not be reached, answered with a
	// server error, or did not answer in time.
	ErrUnavailable ErrorKind = "unavailable"
	// ErrUnauthorized: the registry refused the credentials buildguard has.
	ErrUnauthorized ErrorKind = "unauthorized"
	// ErrInvalidReference: the image reference does not parse.
	ErrInvalidReference ErrorKind = "invalid-reference"
	// ErrInvalidImage: the registry served something that is not a valid
	// image (bad manifest or config).
	ErrInvalidImage ErrorKind = "invalid-image"
	// ErrTooLarge: the registry served a manifest or config larger, or
	// costlier to decode, than buildguard reads, or the images of one
	// workload hold more than it keeps in memory to judge them.
	ErrTooLarge ErrorKind = "too-large"
	// ErrForbiddenAddress: buildguard refused to contact the registry on
	// purpose: its name resolved, or it redirected, to a link-local or
	// cloud-metadata address. A policy finding, not an outage.
	ErrForbiddenAddress ErrorKind = "forbidden-address"
)

// ResolveError says why an image could not be looked up.
type ResolveError struct {
	Kind    ErrorKind
	Message string
}

func (e *ResolveError) Error() string { return string(e.Kind) + ": " + e.Message }
