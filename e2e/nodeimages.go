package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Every image the node runs is made on this machine, from files it has:
// nothing is pulled from the internet.

// imageFile is one entry of an image's only layer.
type imageFile struct {
	Name string // path in the image, without a leading slash
	Mode fs.FileMode
	Body []byte // a regular file's content, or
	Src  string // the host file it is read from
	Link string // a symlink's target
	Dir  bool
}

// layer writes files as one reproducible layer: sorted, owned by root,
// timestamps zero. The same files make the same digest, run after run, so
// that the builders' caches keep what they pulled.
func layer(files []imageFile) (v1.Layer, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].Name < files[j].Name })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{Name: f.Name, Mode: int64(f.Mode.Perm()), ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if f.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000
		}
		var body []byte
		switch {
		case f.Dir:
			h.Typeflag, h.Name = tar.TypeDir, strings.TrimSuffix(f.Name, "/")+"/"
		case f.Link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Link
		default:
			body = f.Body
			if f.Src != "" {
				b, err := os.ReadFile(f.Src)
				if err != nil {
					return nil, err
				}
				body = b
			}
			h.Typeflag, h.Size = tar.TypeReg, int64(len(body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
		tarball.WithCompressedCaching)
}

// makeImage is an image of one layer of files with cfg, created at
// created, whose history is steps (one entry each, the last one the
// layer's).
func makeImage(files []imageFile, cfg v1.Config, created time.Time, steps ...string) (v1.Image, error) {
	l, err := layer(files)
	if err != nil {
		return nil, err
	}
	if len(steps) == 0 {
		steps = []string{"buildguard e2e: files of this machine"}
	}
	hist := make([]v1.History, len(steps))
	for i, s := range steps {
		hist[i] = v1.History{Created: v1.Time{Time: created}, CreatedBy: s, EmptyLayer: i < len(steps)-1}
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: l, History: hist[len(hist)-1]})
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = "amd64", "linux"
	cf.Created = v1.Time{Time: created}
	cf.Config = cfg
	cf.History = hist
	return mutate.ConfigFile(img, cf)
}

// busyboxFiles are Debian's busybox-static as /bin/busybox with a link
// for each applet, /tmp, and the users root and nobody.
func busyboxFiles() ([]imageFile, error) {
	out, err := exec.Command("/usr/bin/busybox", "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox-static is not installed: %w", err)
	}
	files := []imageFile{
		{Name: "bin", Dir: true, Mode: 0o755},
		{Name: "bin/busybox", Src: "/usr/bin/busybox", Mode: 0o755},
		{Name: "tmp", Dir: true, Mode: 0o777 | fs.ModeSticky},
		{Name: "etc", Dir: true, Mode: 0o755},
		{Name: "etc/passwd", Body: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"), Mode: 0o644},
		{Name: "etc/group", Body: []byte("root:x:0:\nnogroup:x:65534:\n"), Mode: 0o644},
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			files = append(files, imageFile{Name: "bin/" + a, Link: "busybox"})
		}
	}
	return files, nil
}

// BusyboxImage is an image of busyboxFiles created at created with the
// given history steps, running sh.
func BusyboxImage(created time.Time, steps ...string) (v1.Image, error) {
	files, err := busyboxFiles()
	if err != nil {
		return nil, err
	}
	return makeImage(files, v1.Config{Cmd: []string{"/bin/sh"}, Env: []string{"PATH=/bin"}}, created, steps...)
}

// systemImages are the node's own: the sandboxes' pause and CoreDNS, from
// bin/.
func (n *Node) systemImages() (map[string]v1.Image, error) {
	created := time.Unix(0, 0)
	pause, err := makeImage([]imageFile{{Name: "pause", Src: n.bin("pause"), Mode: 0o755}},
		v1.Config{Entrypoint: []string{"/pause"}, User: "65535:65535"}, created, "COPY pause /pause")
	if err != nil {
		return nil, err
	}
	coredns, err := makeImage([]imageFile{{Name: "coredns", Src: n.bin("coredns"), Mode: 0o755}, {Name: "tmp", Dir: true, Mode: 0o777 | fs.ModeSticky}},
		v1.Config{Entrypoint: []string{"/coredns"}}, created, "COPY coredns /coredns")
	if err != nil {
		return nil, err
	}
	busybox, err := BusyboxImage(created, "COPY busybox /bin/busybox")
	if err != nil {
		return nil, err
	}
	return map[string]v1.Image{
		"pause:3.10.2":            pause,
		"coredns/coredns:v1.14.6": coredns,
		"base/busybox:1":          busybox,
	}, nil
}

func (n *Node) pushSystemImages(ctx context.Context) error {
	imgs, err := n.systemImages()
	if err != nil {
		return err
	}
	for ref, img := range imgs {
		if _, err := n.Push(ctx, ref, img); err != nil {
			return err
		}
	}
	return nil
}

// Push writes img to the node's registry as repoAndTag ("e2e/shop:1") and
// returns the reference by digest, NodeRegistry/repo@sha256:….
func (n *Node) Push(ctx context.Context, repoAndTag string, img v1.Image) (string, error) {
	ref, err := name.ParseReference(NodeRegistry+"/"+repoAndTag, name.Insecure)
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx)); err != nil {
		return "", fmt.Errorf("push %s: %w", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	return ref.Context().Digest(d.String()).String(), nil
}

// dirFiles lists the files under the host directory src as image paths
// under dst, without those for which skip (of the path relative to src)
// is true.
func dirFiles(src, dst string, skip func(rel string) bool) ([]imageFile, error) {
	var files []imageFile
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		if rel != "." && skip != nil && skip(rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		name := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			files = append(files, imageFile{Name: name, Dir: true, Mode: info.Mode().Perm()})
		case info.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(path)
			if err != nil {
				return err
			}
			files = append(files, imageFile{Name: name, Link: t})
		case info.Mode().IsRegular():
			files = append(files, imageFile{Name: name, Src: path, Mode: info.Mode().Perm()})
		}
		return nil
	})
	return files, err
}

// ImageWithCmd is a busybox image that runs cmd, created at created, with
// history steps.
func ImageWithCmd(created time.Time, cmd []string, steps ...string) (v1.Image, error) {
	files, err := busyboxFiles()
	if err != nil {
		return nil, err
	}
	return makeImage(files, v1.Config{Cmd: cmd, Env: []string{"PATH=/bin"}}, created, steps...)
}
