// Package reviewload is what the benchmarks of bench (in-process) and
// bench/shipped (the built binary) share: the image their review runs in
// a loopback registry, a self-signed certificate, a do-nothing webhook,
// the closed-loop load generator and the figures of a run. The review
// itself is internal/benchreview's.
package reviewload

import (
	"context"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// PolicyYAML is a buildguard policy that allows every image of the
// loopback registry and reaches it over plain HTTP.
const PolicyYAML = `apiVersion: buildguard.dev/v1alpha1
kind: Policy
mode: enforce
registries:
  allow: ["127.0.0.1:*/**"]
  insecure: ["127.0.0.1:*"]
`

// Image is an image in the registry.
type Image struct {
	Tag    string // host/repo:v1
	Digest string // sha256:...
}

// ByDigest is the image's reference by digest, host/repo@sha256:...
func (p Image) ByDigest() string {
	repo, _, _ := strings.Cut(p.Tag, ":v1")
	return repo + "@" + p.Digest
}

// PushImage pushes to ref (host/repo:v1, over plain HTTP) a random
// three-layer image whose config was created 30 days ago, with a history
// of harmless build steps.
func PushImage(ctx context.Context, ref string) (Image, error) {
	img, err := random.Image(1024, 3)
	if err != nil {
		return Image{}, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return Image{}, err
	}
	cf = cf.DeepCopy()
	created := time.Now().Add(-30 * 24 * time.Hour).UTC().Truncate(time.Second)
	at := func(d time.Duration) v1.Time { return v1.Time{Time: created.Add(d)} }
	cf.Created = at(3 * time.Minute)
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.Config.Entrypoint = []string{"/app/server"}
	cf.Config.WorkingDir = "/app"
	cf.Config.User = "65532:65532"
	cf.Config.Labels = map[string]string{
		"org.opencontainers.image.source":   "https://git.example.com/shop/web",
		"org.opencontainers.image.revision": "2f9c4d1e8b7a6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
		"org.opencontainers.image.version":  "v1.4.2",
	}
	cf.History = []v1.History{
		{Created: at(0), CreatedBy: "/bin/sh -c #(nop) ADD file:4b03b5f551e3fbdf47ec609712007327828f7530cc3455c43bbcdcaf449a75a9 in / "},
		{Created: at(0), CreatedBy: `/bin/sh -c #(nop)  CMD ["sh"]`, EmptyLayer: true},
		{Created: at(2 * time.Minute), CreatedBy: "WORKDIR /app", Comment: "buildkit.dockerfile.v0", EmptyLayer: true},
		{Created: at(2 * time.Minute), CreatedBy: "COPY /out/server /app/server # buildkit", Comment: "buildkit.dockerfile.v0"},
		{Created: at(3 * time.Minute), CreatedBy: "COPY config.yaml /app/config.yaml # buildkit", Comment: "buildkit.dockerfile.v0"},
		{Created: at(3 * time.Minute), CreatedBy: "USER 65532:65532", Comment: "buildkit.dockerfile.v0", EmptyLayer: true},
		{Created: at(3 * time.Minute), CreatedBy: `ENTRYPOINT ["/app/server"]`, Comment: "buildkit.dockerfile.v0", EmptyLayer: true},
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return Image{}, err
	}
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return Image{}, err
	}
	if err := remote.Write(r, img, remote.WithContext(ctx)); err != nil {
		return Image{}, err
	}
	d, err := img.Digest()
	if err != nil {
		return Image{}, err
	}
	return Image{Tag: ref, Digest: d.String()}, nil
}
