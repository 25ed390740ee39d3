package provenance

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"buildguard.dev/buildguard/internal/testregistry"
	"buildguard.dev/buildguard/policy"
)

// cosignCLI returns the path of a cosign CLI tools/build.sh built into
// bin/ (make tools): cosign-v2 (v2.6.5) or cosign-v3 (v3.1.3).
func cosignCLI(t testing.TB, name string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "bin", name))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("%s is not built: run make tools (tools/build.sh builds bin/cosign-v2 and bin/cosign-v3): %v", name, err)
	}
	return p
}

// cosignRun runs a cosign CLI offline in dir: every request but to
// loopback goes to a closed port (cosign looks for the Sigstore TUF
// repository, is refused at once and carries on).
func cosignRun(t testing.TB, dir string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "TUF_ROOT=" + filepath.Join(dir, "tuf"), "COSIGN_PASSWORD=", "COSIGN_EXPERIMENTAL=1",
		"HTTPS_PROXY=http://127.0.0.1:9", "HTTP_PROXY=http://127.0.0.1:9", "NO_PROXY=127.0.0.1"}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestCosignCLIs verifies what the cosign v2 and v3 command-line tools
// write: SLSA provenance attestations in the legacy format (a cosign
// attestation manifest, sha256-<hex>.att) and in the Sigstore bundle
// format (an OCI 1.1 referrer, or the referrers tag schema on a registry
// without the referrers API: the in-memory one and Debian's
// docker-registry), and signatures in the legacy format in both schemes
// (tag, and --registry-referrers-mode=oci-1-1) and the bundle format.
// Neither CLI's attest command stores a legacy attestation as a referrer.
func TestCosignCLIs(t *testing.T) {
	type registryKind struct {
		name  string
		start func(t *testing.T) (host string, push func(t *testing.T) v1.Hash)
	}
	inMemory := func(opts ...testregistry.Option) func(t *testing.T) (string, func(*testing.T) v1.Hash) {
		return func(t *testing.T) (string, func(*testing.T) v1.Hash) {
			reg := testregistry.New(t, opts...)
			return reg.Host, func(t *testing.T) v1.Hash {
				return reg.Push(t, "acme/shop:1", testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-48 * time.Hour)}))
			}
		}
	}
	referrersAPI := registryKind{"referrers-api", inMemory(testregistry.WithReferrers())}
	tagSchema := registryKind{"tag-schema", inMemory()}
	distribution := registryKind{"docker-registry", func(t *testing.T) (string, func(*testing.T) v1.Hash) {
		host := testregistry.StartDistribution(t)
		return host, func(t *testing.T) v1.Hash {
			img := testregistry.Build(t, testregistry.Image{Created: time.Now().Add(-48 * time.Hour)})
			ref, err := nameParse(host + "/acme/shop:1")
			if err != nil {
				t.Fatal(err)
			}
			if err := remoteWrite(ref, img); err != nil {
				t.Fatal(err)
			}
			d, _ := img.Digest()
			return d
		}
	}}
	const builder = "https://builder.acme.example/ci"
	tests := []struct {
		name       string
		args       func(cli string) []string // after the subcommand's common flags
		attest     bool
		registries []registryKind
		source     string // where buildguard finds it
	}{
		{"attestation, legacy format", func(cli string) []string {
			if cli == "cosign-v3" {
				return []string{"--use-signing-config=false", "--new-bundle-format=false"}
			}
			return nil
		}, true, []registryKind{referrersAPI, tagSchema}, "tag"},
		{"attestation, bundle format", func(cli string) []string {
			if cli == "cosign-v3" {
				return []string{"--use-signing-config=false"} // the bundle format is v3's default
			}
			return []string{"--new-bundle-format"}
		}, true, []registryKind{referrersAPI, tagSchema, distribution}, "bundle"},
		{"signature, legacy format", func(cli string) []string {
			if cli == "cosign-v3" {
				return []string{"--use-signing-config=false", "--new-bundle-format=false"}
			}
			return nil
		}, false, []registryKind{referrersAPI, tagSchema}, "tag"},
		{"signature, legacy format as a referrer", func(cli string) []string {
			if cli == "cosign-v3" {
				return []string{"--registry-referrers-mode=oci-1-1", "--use-signing-config=false", "--new-bundle-format=false"}
			}
			return []string{"--registry-referrers-mode=oci-1-1"}
		}, false, []registryKind{referrersAPI, tagSchema}, "referrers"},
		{"signature, bundle format", func(cli string) []string {
			if cli == "cosign-v3" {
				return []string{"--use-signing-config=false"}
			}
			return []string{"--new-bundle-format"}
		}, false, []registryKind{referrersAPI, tagSchema}, "bundle"},
	}
	for _, cli := range []string{"cosign-v2", "cosign-v3"} {
		bin := cosignCLI(t, cli)
		dir := t.TempDir()
		cosignRun(t, dir, bin, "generate-key-pair")
		pub, err := os.ReadFile(filepath.Join(dir, "cosign.pub"))
		if err != nil {
			t.Fatal(err)
		}
		pred := fmt.Sprintf(`{"buildDefinition":{"buildType":"https://acme.example/build","externalParameters":{"source":"git+https://github.com/acme/shop@refs/heads/main"}},`+
			`"runDetails":{"builder":{"id":%q},"metadata":{"finishedOn":%q}}}`, builder, time.Now().Add(-24*time.Hour).UTC().Format(time.RFC3339))
		if err := os.WriteFile(filepath.Join(dir, "predicate.json"), []byte(pred), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, tt := range tests {
			for _, rk := range tt.registries {
				t.Run(cli+"/"+tt.name+"/"+rk.name, func(t *testing.T) {
					host, push := rk.start(t)
					d := push(t)
					img := host + "/acme/shop@" + d.String()
					args := []string{bin, "sign", "--key", "cosign.key", "--tlog-upload=false", "--yes", "--allow-insecure-registry", "--allow-http-registry"}
					if tt.attest {
						args = []string{bin, "attest", "--key", "cosign.key", "--type", "slsaprovenance1", "--predicate", "predicate.json", "--tlog-upload=false", "--yes", "--allow-insecure-registry", "--allow-http-registry"}
					}
					cosignRun(t, dir, append(append(args, tt.args(cli)...), img)...)

					spec := policy.Spec{Signatures: policy.Signatures{Required: !tt.attest, Keys: []string{string(pub)}, IgnoreTlog: true}}
					if tt.attest {
						spec.Provenance = policy.ProvenanceRequirements{Required: true, Builders: []string{"https://builder.acme.example/*"}, Sources: []string{"github.com/acme/*"}}
					}
					v, _ := newVerifier(t)
					rules, pv, vd := decide(t, v, host+"/acme/shop:1", nil, compile(t, spec), time.Now())
					if len(rules) != 0 {
						t.Fatalf("Decide = %v, want no finding; %+v; %+v", rules, pv, vd.Images[0].Findings)
					}
					if tt.attest {
						if len(pv.Attestations) != 1 || !pv.Attestations[0].Verified || pv.Attestations[0].Source != tt.source || pv.Attestations[0].BuilderID != builder {
							t.Fatalf("attestations = %+v, want one verified, from %s, by %s", pv.Attestations, tt.source, builder)
						}
					} else if len(pv.Signatures) != 1 || !pv.Signatures[0].Verified || pv.Signatures[0].Source != tt.source {
						t.Fatalf("signatures = %+v, want one verified, from %s", pv.Signatures, tt.source)
					}
					// Another key trusts none of it.
					other := newKey(t, "ecdsa")
					spec.Signatures.Keys = []string{other.pem}
					v, _ = newVerifier(t)
					rules, _, _ = decide(t, v, host+"/acme/shop:1", nil, compile(t, spec), time.Now())
					want := "untrusted-signer"
					if tt.attest {
						want = "missing-provenance"
					}
					if strings.Join(rules, ",") != want {
						t.Errorf("with another key: Decide = %v, want %s", rules, want)
					}
				})
			}
		}
	}
}
