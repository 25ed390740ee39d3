// Package evidence keeps what nodes report (builds and outbound connections)
// and the decision records, in SQLite or PostgreSQL (docs/store.md).
package evidence

import (
	"net/netip"
	"time"
)

// Build is an image build a node reported.
type Build struct {
	Source  string // sensor or format: "agent", "falco", "tetragon", "docker"
	EventID string // idempotency key within Node and Source; a retried report is not stored twice
	Node    string
	// Reporter is who reported the build: the authenticated user (a
	// service account) that posted it. Empty for items stored before
	// buildguard recorded it. Parsers leave it empty: the server sets it.
	Reporter string `json:",omitempty"`
	Tool     string // docker, buildkit, buildah, kaniko, …
	// ImageID is the image's config digest ("sha256:…"): a Docker image ID
	// equals the config digest of the image pushed from it.
	ImageID      string
	Tags         []string
	Started      time.Time
	Finished     time.Time
	PIDs         []int    // the build's process tree, when known
	ContainerIDs []string // containers the build ran steps in (RUN)
	CgroupID     string
	Steps        []string // created_by of the build steps, when known
}

// Connection is an outbound network connection a node reported.
type Connection struct {
	Source      string
	EventID     string
	Node        string
	Reporter    string `json:",omitempty"` // as Build.Reporter
	Time        time.Time
	Process     string
	PID         int
	Cmdline     string
	ContainerID string
	CgroupID    string
	DestIP      netip.Addr
	DestPort    int
	DestName    string // resolved name, when known
}

// Report is what one node sends at once.
type Report struct {
	Node   string
	Sensor string // which sensor made it: "ebpf", "procfs", "falco", "tetragon", "docker-events"
	// Reporter is who posted the report; items without a Reporter take it.
	Reporter    string `json:",omitempty"`
	Builds      []Build
	Connections []Connection
}
