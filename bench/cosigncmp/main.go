// Command cosigncmp measures buildguard's cold verification of a signed
// and attested image, side by side with the commands users run instead:
// `cosign verify` and `cosign verify-attestation`, built from the cosign
// module version buildguard pins.
//
// One process starts an in-memory registry on loopback, pushes a random
// image, signs it with a fresh ECDSA key and attests it with SLSA
// provenance v1 in cosign's tag scheme (sha256-<hex>.sig, .att). Then it
// alternates, -runs times: buildguard (a new registry client, transport
// and provenance.Verifier, so no cache and no open connection is reused:
// resolve the tag, discover, fetch and verify the signature and the
// attestation), `cosign verify` and `cosign verify-attestation` on the
// same tag with the same key. Both sides skip the transparency log
// (ignoreTlog, --insecure-ignore-tlog): the image is signed offline.
// cosign runs with HTTP(S)_PROXY pointing at a closed port, so it cannot
// reach the internet unnoticed (it tries the Sigstore TUF repository, and
// carries on when that is refused). `cosign version` is timed too: the
// cost of starting the process, which a command pays and an admission
// webhook does not.
//
// Usage:
//
//	go install github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5   # the version in go.mod
//	go run ./bench/cosigncmp -cosign $(go env GOPATH)/bin/cosign [-runs 21]
package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/sigstore/sigstore/pkg/signature/dsse"

	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/provenance"
	"buildguard.dev/buildguard/registry"
)

const (
	builderID = "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/generator_container_slsa3.yml@refs/tags/v2.0.0"
	sourceURI = "git+https://github.com/acme/shop@refs/tags/v1.2.0"
)

func main() {
	cosign := flag.String("cosign", "bin/cosign", "cosign binary built from the pinned module version")
	runs := flag.Int("runs", 21, "measured runs of each side")
	flag.Parse()
	if err := run(context.Background(), *cosign, *runs, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "cosigncmp:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cosign string, runs int, out io.Writer) error {
	if _, err := os.Stat(cosign); err != nil {
		return fmt.Errorf("-cosign: %w", err)
	}
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)), ggcrregistry.WithReferrersSupport(true)))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	dir, err := os.MkdirTemp("", "cosigncmp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tag, keyFile, keyPEM, err := fixture(u.Host, dir)
	if err != nil {
		return err
	}
	p, err := policy.Compile(policy.Spec{
		Registries: policy.Registries{Allow: []string{"127.0.0.1:*/**"}, Insecure: []string{"127.0.0.1:*"}},
		Signatures: policy.Signatures{Required: true, Keys: []string{keyPEM}, IgnoreTlog: true},
		Provenance: policy.ProvenanceRequirements{Required: true, Builders: []string{"https://github.com/slsa-framework/**"}, Sources: []string{"github.com/acme/*"}},
	})
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(tag)
	if err != nil {
		return err
	}
	env := append(os.Environ(), "HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=127.0.0.1,localhost", "TUF_ROOT="+filepath.Join(dir, "tuf"))
	commands := [][]string{
		{cosign, "verify", "--key", keyFile, "--insecure-ignore-tlog", "--allow-insecure-registry", tag},
		{cosign, "verify-attestation", "--key", keyFile, "--type", "slsaprovenance1", "--insecure-ignore-tlog", "--allow-insecure-registry", tag},
	}
	buildguard := func() error {
		c := registry.New(registry.WithTransport(http.DefaultTransport.(*http.Transport).Clone()))
		req := registry.Request{Ref: ref, Insecure: true}
		img, err := c.Resolve(ctx, req)
		if err != nil {
			return err
		}
		pv := provenance.New(c).Verify(ctx, req, img, p)
		if pv.Err != nil || len(pv.Signatures) != 1 || !pv.Signatures[0].Verified || len(pv.Attestations) != 1 || !pv.Attestations[0].Verified {
			return fmt.Errorf("buildguard did not verify: %+v", pv)
		}
		return nil
	}
	command := func(args []string) error {
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = env
		b, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %v\n%s", strings.Join(args[1:2], " "), err, b)
		}
		return nil
	}
	// Warm the page cache and the file system, unrecorded.
	if err := buildguard(); err != nil {
		return err
	}
	for _, c := range commands {
		if err := command(c); err != nil {
			return err
		}
	}
	var bg, verify, attest, both, start []float64
	for range runs {
		d, err := timed(buildguard)
		if err != nil {
			return err
		}
		bg = append(bg, d)
		dv, err := timed(func() error { return command(commands[0]) })
		if err != nil {
			return err
		}
		da, err := timed(func() error { return command(commands[1]) })
		if err != nil {
			return err
		}
		ds, err := timed(func() error { return command([]string{cosign, "version"}) })
		if err != nil {
			return err
		}
		verify, attest, both, start = append(verify, dv), append(attest, da), append(both, dv+da), append(start, ds)
	}
	mb, mv, ma, m2 := median(bg), median(verify), median(attest), median(both)
	fmt.Fprintf(out, "cold verification of one signed and attested image, %d runs each, %s/%s, %d CPUs\n\n", runs, runtime.GOOS, runtime.GOARCH, runtime.NumCPU())
	fmt.Fprintf(out, "| what | median | min | max |\n|---|---|---|---|\n")
	row := func(what string, xs []float64) {
		fmt.Fprintf(out, "| %s | %.1f ms | %.1f ms | %.1f ms |\n", what, median(xs), slices.Min(xs), slices.Max(xs))
	}
	row("buildguard: resolve, signature and attestation (one process, cold caches)", bg)
	row("`cosign verify`", verify)
	row("`cosign verify-attestation`", attest)
	row("both cosign commands", both)
	row("`cosign version` (process start alone, for scale)", start)
	fmt.Fprintf(out, "\nratio (both cosign commands / buildguard): %.1f× (verify alone %.1f×, verify-attestation alone %.1f×)\n", m2/mb, mv/mb, ma/mb)
	fmt.Fprintf(out, "\ncommands:\n  %s\n  %s\n", strings.Join(commands[0][1:], " "), strings.Join(commands[1][1:], " "))
	return nil
}

func timed(f func() error) (float64, error) {
	start := time.Now()
	err := f()
	return float64(time.Since(start)) / float64(time.Millisecond), err
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// fixture pushes an image to host, signs and attests it with a new key in
// cosign's tag scheme, and writes the public key to dir. It returns the
// image's tag, the key file and the key.
func fixture(host, dir string) (tag, keyFile, keyPEM string, err error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", "", err
	}
	signer, err := signature.LoadSigner(priv, crypto.SHA256)
	if err != nil {
		return "", "", "", err
	}
	pub, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		return "", "", "", err
	}
	keyFile = filepath.Join(dir, "cosign.pub")
	if err := os.WriteFile(keyFile, pub, 0o644); err != nil {
		return "", "", "", err
	}
	img, err := random.Image(1024, 2)
	if err != nil {
		return "", "", "", err
	}
	tag = host + "/acme/shop:1"
	ref, err := name.ParseReference(tag)
	if err != nil {
		return "", "", "", err
	}
	if err := remote.Write(ref, img); err != nil {
		return "", "", "", err
	}
	d, err := img.Digest()
	if err != nil {
		return "", "", "", err
	}
	payload := fmt.Appendf(nil, `{"critical":{"identity":{"docker-reference":%q},"image":{"docker-manifest-digest":%q},"type":"cosign container image signature"},"optional":null}`, ref.Context().Name(), d)
	sig, err := signer.SignMessage(strings.NewReader(string(payload)))
	if err != nil {
		return "", "", "", err
	}
	if err := attach(ref.Context(), d, ".sig", static.NewLayer(payload, "application/vnd.dev.cosign.simplesigning.v1+json"),
		map[string]string{"dev.cosignproject.cosign/signature": base64.StdEncoding.EncodeToString(sig)}); err != nil {
		return "", "", "", err
	}
	st := fmt.Appendf(nil, `{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":%q,"digest":{"sha256":%q}}],"predicateType":"https://slsa.dev/provenance/v1","predicate":{"buildDefinition":{"buildType":"https://example/build","externalParameters":{"workflow":{"repository":"https://github.com/acme/shop","ref":"refs/tags/v1.2.0","path":".github/workflows/release.yml"}},"resolvedDependencies":[{"uri":%q}]},"runDetails":{"builder":{"id":%q},"metadata":{"finishedOn":%q}}}}`,
		ref.Context().Name(), d.Hex, sourceURI, builderID, time.Now().Add(-time.Hour).UTC().Format(time.RFC3339))
	envelope, err := dsse.WrapSigner(signer, "application/vnd.in-toto+json").SignMessage(strings.NewReader(string(st)))
	if err != nil {
		return "", "", "", err
	}
	if err := attach(ref.Context(), d, ".att", static.NewLayer(envelope, "application/vnd.dsse.envelope.v1+json"),
		map[string]string{"predicateType": "https://slsa.dev/provenance/v1", "dev.cosignproject.cosign/signature": ""}); err != nil {
		return "", "", "", err
	}
	return tag, keyFile, string(pub), nil
}

// attach writes one cosign signature or attestation layer under the
// digest's tag (sha256-<hex>.sig or .att).
func attach(repo name.Repository, d v1.Hash, suffix string, l v1.Layer, ann map[string]string) error {
	img, err := mutate.Append(mutate.MediaType(empty.Image, types.OCIManifestSchema1), mutate.Addendum{Layer: l, Annotations: ann})
	if err != nil {
		return err
	}
	if err := remote.Write(repo.Tag(strings.Replace(d.String(), ":", "-", 1)+suffix), img); err != nil {
		return errors.New("writing " + suffix + ": " + err.Error())
	}
	return nil
}
