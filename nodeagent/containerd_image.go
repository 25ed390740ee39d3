package nodeagent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// The media types of manifests and indexes, OCI's and Docker's.
const (
	mediaOCIIndex      = "application/vnd.oci.image.index.v1+json"
	mediaOCIManifest   = "application/vnd.oci.image.manifest.v1+json"
	mediaDockerList    = "application/vnd.docker.distribution.manifest.list.v2+json"
	mediaDockerManifst = "application/vnd.docker.distribution.manifest.v2+json"
)

// containerdTool is the tool of the builds the containerd watcher finds.
const containerdTool = "containerd"

// maxBlob bounds a manifest, index or config read from the content store.
const maxBlob = 4 << 20

// errNotImage is returned for content that is not an image's.
var errNotImage = errors.New("not an image")

func isIndex(mt string) bool    { return mt == mediaOCIIndex || mt == mediaDockerList }
func isManifest(mt string) bool { return mt == mediaOCIManifest || mt == mediaDockerManifst }

type ociDescriptor struct {
	MediaType string `json:"mediaType"`
	Digest    string `json:"digest"`
	Size      int64  `json:"size"`
	Platform  *struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
	} `json:"platform"`
}

func (d ociDescriptor) ctr() ctrDescriptor {
	return ctrDescriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size}
}

// checkDigest checks that d is sha256:<64 lowercase hex>: the only
// algorithm image IDs use here.
func checkDigest(d string) error {
	if !imageIDPattern.MatchString(d) {
		return fmt.Errorf("digest %q: want sha256:<64 lowercase hex>", clip(d, 80))
	}
	return nil
}

// verifyBlob checks that b is the content of digest d.
func verifyBlob(d string, b []byte) error {
	sum := sha256.Sum256(b)
	if got := "sha256:" + hex.EncodeToString(sum[:]); got != d {
		return fmt.Errorf("blob %s: its content hashes to %s", d, got)
	}
	return nil
}

// pickPlatform is the child of index b for os/arch (variant too, when
// given and the child names one); an index of one child without a
// platform is taken to be that child.
func pickPlatform(b []byte, os, arch, variant string) (ctrDescriptor, error) {
	var idx struct {
		SchemaVersion int             `json:"schemaVersion"`
		Manifests     []ociDescriptor `json:"manifests"`
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return ctrDescriptor{}, fmt.Errorf("%w: index: %v", errNotImage, err)
	}
	if idx.SchemaVersion != 2 {
		return ctrDescriptor{}, fmt.Errorf("%w: index schemaVersion %d", errNotImage, idx.SchemaVersion)
	}
	if len(idx.Manifests) == 1 && idx.Manifests[0].Platform == nil {
		return idx.Manifests[0].ctr(), checkDigest(idx.Manifests[0].Digest)
	}
	var match *ociDescriptor
	for i, m := range idx.Manifests {
		p := m.Platform
		if p == nil || p.OS != os || p.Architecture != arch {
			continue
		}
		if variant != "" && p.Variant != "" && p.Variant != variant {
			continue
		}
		if match == nil {
			match = &idx.Manifests[i]
		}
	}
	if match == nil {
		return ctrDescriptor{}, fmt.Errorf("%w: the index has no manifest for %s/%s", errNotImage, os, arch)
	}
	return match.ctr(), checkDigest(match.Digest)
}

// manifestConfig is the config descriptor of manifest b.
func manifestConfig(b []byte) (ctrDescriptor, error) {
	var m struct {
		SchemaVersion int           `json:"schemaVersion"`
		Config        ociDescriptor `json:"config"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return ctrDescriptor{}, fmt.Errorf("%w: manifest: %v", errNotImage, err)
	}
	if m.SchemaVersion != 2 {
		return ctrDescriptor{}, fmt.Errorf("%w: manifest schemaVersion %d", errNotImage, m.SchemaVersion)
	}
	if err := checkDigest(m.Config.Digest); err != nil {
		return ctrDescriptor{}, fmt.Errorf("%w: manifest config: %v", errNotImage, err)
	}
	if m.Config.Size < 0 || m.Config.Size > maxBlob {
		return ctrDescriptor{}, fmt.Errorf("manifest config of %d bytes: %w (more than %d)", m.Config.Size, ErrTooLarge, maxBlob)
	}
	return m.Config.ctr(), nil
}

// imageConfig is what the watcher reads of an image config.
type imageConfig struct {
	Created time.Time
	// Steps are the history's created_by, oldest first, empty ones left out.
	Steps []string
	// StepTimes are the history's times, zero where it has none.
	StepTimes []time.Time
}

// parseImageConfig reads an image config (OCI image-spec's, which
// Docker's is).
func parseImageConfig(b []byte) (imageConfig, error) {
	var c struct {
		Created *time.Time `json:"created"`
		History []struct {
			Created   *time.Time `json:"created"`
			CreatedBy string     `json:"created_by"`
		} `json:"history"`
		RootFS *struct {
			Type string `json:"type"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return imageConfig{}, fmt.Errorf("%w: config: %v", errNotImage, err)
	}
	if c.RootFS == nil || c.RootFS.Type != "layers" {
		// Artifacts (signatures, Helm charts) have configs of their own.
		return imageConfig{}, fmt.Errorf("%w: config without rootfs of type layers", errNotImage)
	}
	var out imageConfig
	if c.Created != nil {
		out.Created = c.Created.UTC()
	}
	for _, h := range c.History {
		var t time.Time
		if h.Created != nil {
			t = h.Created.UTC()
		}
		out.StepTimes = append(out.StepTimes, t)
		if s := strings.TrimSpace(h.CreatedBy); s != "" {
			out.Steps = append(out.Steps, s)
		}
	}
	return out, nil
}

// distributionSource is the prefix of the labels containerd puts on
// content fetched from a registry (containerd.io/distribution.source.<host>
// = <repository>), by ctr pull, the CRI plugin's pull, nerdctl pull and
// BuildKit's pull of a base image alike.
const distributionSource = "containerd.io/distribution.source."

// criManaged is the label the CRI plugin puts on the images it pulls.
const criManaged = "io.cri-containerd.image"

// pullEvidence is why image img, with content labels of its manifest (or
// index) and config, looks pulled rather than built here; "" when
// nothing says so.
func pullEvidence(img ctrImage, contentLabels ...map[string]string) string {
	if strings.Contains(img.Name, "@sha256:") {
		return "a digest reference"
	}
	if img.Labels[criManaged] == "managed" {
		return "pulled by the CRI plugin (label " + criManaged + ")"
	}
	for _, l := range contentLabels {
		for k := range l {
			if strings.HasPrefix(k, distributionSource) {
				return "fetched from a registry (label " + k + ")"
			}
		}
	}
	return ""
}

// containerdBuild is the build of image img (config digest cfgDigest,
// config cfg), its record changed at at; false when it does not look built
// on this node: it looks pulled (pulled says why), or it was not created
// within retention before at.
func containerdBuild(img ctrImage, cfgDigest string, cfg imageConfig, pulled string, at time.Time, retention time.Duration) (BuildInfo, bool) {
	if pulled != "" || cfg.Created.IsZero() || at.Sub(cfg.Created) > retention {
		return BuildInfo{}, false
	}
	b := BuildInfo{
		Tool:     containerdTool,
		ImageID:  cfgDigest,
		Tags:     []string{img.Name},
		Started:  cfg.Created,
		Finished: at,
		Steps:    cfg.Steps,
	}
	// The build's steps were committed after it began; the earliest
	// recent step is the best estimate of its start.
	for _, t := range cfg.StepTimes {
		if !t.IsZero() && t.Before(b.Started) && at.Sub(t) <= retention {
			b.Started = t
		}
	}
	if b.Finished.Before(b.Started) {
		b.Finished = b.Started
	}
	return b, true
}
