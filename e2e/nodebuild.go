package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// The images the Dockerfile builds FROM, made on this machine: the
// stand-ins of golang:1.26 and gcr.io/distroless/static-debian12:nonroot
// that a builder without Docker Hub passes as GO_IMAGE and BASE_IMAGE.
const (
	GoImage   = NodeRegistry + "/base/golang:1.26"
	BaseImage = NodeRegistry + "/base/static:nonroot"
	// ImageRepo is where BuildImage pushes buildguard's image.
	ImageRepo = NodeRegistry + "/buildguard/buildguard"
)

// ImageBuild is buildguard's image built from the repository's Dockerfile.
type ImageBuild struct {
	Ref  string        // ImageRepo@sha256:…
	Took time.Duration // docker build and docker push
	// Size is what a node pulls: the manifest's config and layers.
	Size int64
	// Unpacked is the size of its files (docker image inspect's Size).
	Unpacked int64
	Config   v1.Config
}

// goToolchainFiles are the host's Go (/usr/local/go, without its tests and
// documents) with busybox for RUN's /bin/sh and the CA certificates.
func goToolchainFiles() ([]imageFile, error) {
	goroot := "/usr/local/go"
	if out, err := exec.Command("go", "env", "GOROOT").Output(); err == nil {
		goroot = strings.TrimSpace(string(out))
	}
	files, err := dirFiles(goroot, "usr/local/go", func(rel string) bool {
		return rel == "test" || rel == "doc" || rel == "misc"
	})
	if err != nil {
		return nil, err
	}
	bb, err := busyboxFiles()
	if err != nil {
		return nil, err
	}
	files = append(files, bb...)
	return append(files,
		imageFile{Name: "usr", Dir: true, Mode: 0o755}, imageFile{Name: "usr/local", Dir: true, Mode: 0o755},
		imageFile{Name: "go", Dir: true, Mode: 0o777}, imageFile{Name: "root", Dir: true, Mode: 0o700},
		imageFile{Name: "etc/ssl", Dir: true, Mode: 0o755}, imageFile{Name: "etc/ssl/certs", Dir: true, Mode: 0o755},
		imageFile{Name: "etc/ssl/certs/ca-certificates.crt", Src: "/etc/ssl/certs/ca-certificates.crt", Mode: 0o644},
	), nil
}

// nonrootFiles are what distroless static's nonroot image holds and
// buildguard needs: the users (nonroot is 65532), CA certificates, /tmp.
func nonrootFiles() []imageFile {
	return []imageFile{
		{Name: "etc", Dir: true, Mode: 0o755},
		{Name: "etc/passwd", Mode: 0o644, Body: []byte("root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n")},
		{Name: "etc/group", Mode: 0o644, Body: []byte("root:x:0:\nnogroup:x:65534:\nnonroot:x:65532:\n")},
		{Name: "etc/ssl", Dir: true, Mode: 0o755}, {Name: "etc/ssl/certs", Dir: true, Mode: 0o755},
		{Name: "etc/ssl/certs/ca-certificates.crt", Src: "/etc/ssl/certs/ca-certificates.crt", Mode: 0o644},
		{Name: "tmp", Dir: true, Mode: 0o777 | fs.ModeSticky},
		{Name: "home", Dir: true, Mode: 0o755}, {Name: "home/nonroot", Dir: true, Mode: 0o700},
	}
}

// pushBaseImages pushes GoImage and BaseImage to the node's registry.
func (n *Node) pushBaseImages(ctx context.Context) error {
	files, err := goToolchainFiles()
	if err != nil {
		return err
	}
	created := time.Unix(0, 0)
	goImg, err := makeImage(files, v1.Config{
		Env:        []string{"PATH=/go/bin:/usr/local/go/bin:/bin", "GOPATH=/go", "GOTOOLCHAIN=local"},
		WorkingDir: "/go", Cmd: []string{"/bin/sh"},
	}, created, "COPY /usr/local/go /usr/local/go")
	if err != nil {
		return err
	}
	base, err := makeImage(nonrootFiles(), v1.Config{
		User: "65532", WorkingDir: "/home/nonroot",
		Env: []string{"PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"},
	}, created, "COPY rootfs /")
	if err != nil {
		return err
	}
	for ref, img := range map[string]v1.Image{GoImage: goImg, BaseImage: base} {
		if _, err := n.Push(ctx, strings.TrimPrefix(ref, NodeRegistry+"/"), img); err != nil {
			return err
		}
		// The BuildKit of Debian's Docker 20.10 asks registries over HTTPS
		// only (--insecure-registry is for docker pull and push): it finds
		// the base images in the Engine's own store instead.
		if err := n.Docker.LoadImage(ctx, ref, img); err != nil {
			return err
		}
	}
	return nil
}

// moduleProxyAddr is where moduleProxy listens when it can.
const moduleProxyAddr = "127.0.0.1:38017"

// moduleProxy serves this machine's Go module cache as a module proxy on
// loopback (GOPROXY protocol: the cache's download directory has its
// layout), so that the image's `go mod download` needs no network. It
// first runs `go mod download` in the module at root: the image downloads
// every module go.mod lists, while builds and tests here fetch only those
// of this platform's packages (not Windows-only ones such as
// go-ansiterm), so a fresh machine's cache lacks some.
func moduleProxy(ctx context.Context, root string) (url string, stop func(), err error) {
	dctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	dl := exec.CommandContext(dctx, "go", "mod", "download")
	dl.Dir = root
	if out, err := dl.CombinedOutput(); err != nil {
		return "", nil, fmt.Errorf("go mod download in %s, to fill the module cache the image's build reads: %w\n%s", root, err, out)
	}
	out, err := exec.CommandContext(ctx, "go", "env", "GOMODCACHE").Output()
	if err != nil {
		return "", nil, fmt.Errorf("go env GOMODCACHE: %w", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "cache", "download")
	// The same address every run when it is free: GOPROXY is a build
	// argument, and a new value would miss BuildKit's cache.
	ln, err := net.Listen("tcp", moduleProxyAddr)
	if err != nil {
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return "", nil, err
		}
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

// BuildImage builds buildguard's image from the repository's Dockerfile as
// users do, with BuildKit (Debian docker.io's CLI and the node's Docker
// Engine, DOCKER_BUILDKIT=1 docker build --network host), FROM the base
// images made here, with modules from this machine's module cache, and
// pushes it to the node's registry tagged version. Base images are made
// the first time.
func (n *Node) BuildImage(ctx context.Context, version string) (*ImageBuild, error) {
	if n.Docker == nil {
		return nil, fmt.Errorf("BuildImage needs the node's Docker Engine (StartDocker)")
	}
	if !n.basesPushed {
		if err := n.pushBaseImages(ctx); err != nil {
			return nil, err
		}
		n.basesPushed = true
	}
	proxy, stop, err := moduleProxy(ctx, n.root)
	if err != nil {
		return nil, err
	}
	defer stop()
	tag := ImageRepo + ":" + version
	t0 := time.Now()
	if _, err := n.DockerCLI(ctx, "build", "--network", "host", "--progress", "plain",
		"--build-arg", "VERSION="+version, "--build-arg", "GO_IMAGE="+GoImage, "--build-arg", "BASE_IMAGE="+BaseImage,
		"--build-arg", "GOPROXY="+proxy, "-t", tag, n.root); err != nil {
		return nil, err
	}
	if _, err := n.DockerCLI(ctx, "push", tag); err != nil {
		return nil, err
	}
	b := &ImageBuild{Took: time.Since(t0)}
	ref, err := name.ParseReference(tag, name.Insecure)
	if err != nil {
		return nil, err
	}
	desc, err := remote.Get(ref, remote.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	b.Ref = ImageRepo + "@" + desc.Digest.String()
	img, err := desc.Image()
	if err != nil {
		return nil, err
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, err
	}
	b.Size = m.Config.Size
	for _, l := range m.Layers {
		b.Size += l.Size
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	b.Config = cf.Config
	out, err := n.DockerCLI(ctx, "image", "inspect", "--format", "{{json .Size}}", tag)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(bytes.TrimSpace([]byte(out)), &b.Unpacked); err != nil {
		return nil, fmt.Errorf("docker image inspect: %q: %w", out, err)
	}
	return b, nil
}

// DockerCLI runs Debian docker.io's docker command (/usr/bin/docker, with
// BuildKit built in) against the node's Docker Engine, with BuildKit on and
// its configuration under NodeDir, and returns its output.
func (n *Node) DockerCLI(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "/usr/bin/docker", args...)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=1", "DOCKER_HOST=unix://"+dockerSocket,
		"DOCKER_CONFIG="+filepath.Join(NodeDir, "docker-cli"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("docker %s: %w\n%s", strings.Join(args, " "), err, tailString(string(out), 6000))
	}
	return string(out), nil
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
