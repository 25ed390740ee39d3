// Package nodeagent is buildguard's node agent: it watches the node's
// Docker Engine and containerd for image builds and ties the node's
// outbound connections (from package conns) to them, and delivers both to buildguard's
// POST /v1/node-reports as NodeReports (docs/node-reports.md), buffered on
// disk while the server cannot take them.
package nodeagent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// DockerAPIVersion is the Engine API version the agent speaks: Docker
// 20.10's, which every later daemon still serves.
const DockerAPIVersion = "1.41"

// maxDockerBody bounds what the agent reads from one inspect or history
// answer; a history of 1,000 steps with long commands fits.
const maxDockerBody = 8 << 20

// maxEventLine bounds one /events message.
const maxEventLine = 1 << 20

// Docker talks to a Docker Engine over its API socket with net/http.
type Docker struct {
	// Host is the daemon's address: unix:///var/run/docker.sock or
	// tcp://host:port (plain HTTP; only for tests and local daemons).
	Host string
	// Timeout bounds each request other than the event stream. The
	// default is 10s.
	Timeout time.Duration

	client *http.Client
	base   string
}

// NewDocker returns a client for host ("unix:///var/run/docker.sock").
func NewDocker(host string) (*Docker, error) {
	d := &Docker{Host: host}
	u, err := url.Parse(host)
	if err != nil {
		return nil, fmt.Errorf("docker host %q: %w", host, err)
	}
	tr := &http.Transport{MaxIdleConns: 4, IdleConnTimeout: 90 * time.Second, ResponseHeaderTimeout: 30 * time.Second}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if path == "" {
			return nil, fmt.Errorf("docker host %q: no socket path", host)
		}
		dialer := &net.Dialer{Timeout: 5 * time.Second}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", path)
		}
		d.base = "http://docker"
	case "tcp", "http":
		if u.Host == "" {
			return nil, fmt.Errorf("docker host %q: no address", host)
		}
		d.base = "http://" + u.Host
	default:
		return nil, fmt.Errorf("docker host %q: want unix:///path or tcp://host:port", host)
	}
	d.client = &http.Client{Transport: tr}
	return d, nil
}

// DockerError is an answer of the daemon other than 2xx.
type DockerError struct {
	Path   string
	Status int
	Msg    string
}

func (e *DockerError) Error() string {
	return fmt.Sprintf("docker %s: %d %s", e.Path, e.Status, e.Msg)
}

// NotFound reports whether the object asked for does not exist (any more).
func (e *DockerError) NotFound() bool { return e.Status == http.StatusNotFound }

func (d *Docker) timeout() time.Duration {
	if d.Timeout <= 0 {
		return 10 * time.Second
	}
	return d.Timeout
}

func (d *Docker) get(ctx context.Context, path string, q url.Values, out any) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout())
	defer cancel()
	u := d.base + "/v" + DockerAPIVersion + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("docker %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDockerBody+1))
	if err != nil {
		return fmt.Errorf("docker %s: %w", path, err)
	}
	if resp.StatusCode/100 != 2 {
		return &DockerError{Path: path, Status: resp.StatusCode, Msg: dockerMessage(body)}
	}
	if len(body) > maxDockerBody {
		return fmt.Errorf("docker %s: answer larger than %d bytes", path, maxDockerBody)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("docker %s: %w", path, err)
	}
	return nil
}

// dockerMessage is the "message" of a daemon's error answer, or its body.
func dockerMessage(body []byte) string {
	var m struct{ Message string }
	if json.Unmarshal(body, &m) == nil && m.Message != "" {
		return m.Message
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// Ping checks that the daemon answers.
func (d *Docker) Ping(ctx context.Context) error {
	var v struct{ APIVersion string }
	return d.get(ctx, "/version", nil, &v)
}

// Image is what the agent uses of GET /images/{id}/json.
type Image struct {
	ID       string   `json:"Id"`
	Parent   string   `json:"Parent"`
	RepoTags []string `json:"RepoTags"`
	// RepoDigests are set for an image pulled from (or pushed to) a
	// registry.
	RepoDigests []string  `json:"RepoDigests"`
	Created     time.Time `json:"Created"`
	// Container is the container the classic builder (or docker commit)
	// committed this image from; empty for imported and BuildKit images.
	Container string `json:"Container"`
}

// ImageInspect returns image id.
func (d *Docker) ImageInspect(ctx context.Context, id string) (Image, error) {
	var img Image
	err := d.get(ctx, "/images/"+url.PathEscape(id)+"/json", nil, &img)
	return img, err
}

// ImageSummary is what the agent uses of an entry of GET /images/json.
type ImageSummary struct {
	ID      string `json:"Id"`
	Created int64  `json:"Created"` // seconds since the epoch
}

// Images lists the daemon's images (tagged and dangling; not the
// intermediate images of the classic builder).
func (d *Docker) Images(ctx context.Context) ([]ImageSummary, error) {
	var l []ImageSummary
	err := d.get(ctx, "/images/json", nil, &l)
	return l, err
}

// HistoryEntry is one entry of GET /images/{id}/history, newest first.
type HistoryEntry struct {
	ID        string   `json:"Id"` // "<missing>" when no local image has this layer's config
	Created   int64    `json:"Created"`
	CreatedBy string   `json:"CreatedBy"`
	Tags      []string `json:"Tags"`
	Comment   string   `json:"Comment"`
}

// ImageHistory returns image id's history, newest first.
func (d *Docker) ImageHistory(ctx context.Context, id string) ([]HistoryEntry, error) {
	var h []HistoryEntry
	err := d.get(ctx, "/images/"+url.PathEscape(id)+"/history", nil, &h)
	return h, err
}

// Container is what the agent uses of GET /containers/{id}/json.
type Container struct {
	ID      string    `json:"Id"`
	Created time.Time `json:"Created"`
	Image   string    `json:"Image"`
	State   struct {
		Pid     int  `json:"Pid"`
		Running bool `json:"Running"`
	} `json:"State"`
	Config struct {
		Cmd    []string          `json:"Cmd"`
		Labels map[string]string `json:"Labels"`
	} `json:"Config"`
}

// ContainerInspect returns container id.
func (d *Docker) ContainerInspect(ctx context.Context, id string) (Container, error) {
	var c Container
	err := d.get(ctx, "/containers/"+url.PathEscape(id)+"/json", nil, &c)
	return c, err
}

// Event is one message of GET /events.
type Event struct {
	Type   string `json:"Type"`
	Action string `json:"Action"`
	Actor  struct {
		ID         string            `json:"ID"`
		Attributes map[string]string `json:"Attributes"`
	} `json:"Actor"`
	Time     int64 `json:"time"`
	TimeNano int64 `json:"timeNano"`
}

// When is the event's time.
func (e Event) When() time.Time {
	if e.TimeNano > 0 {
		return time.Unix(0, e.TimeNano)
	}
	return time.Unix(e.Time, 0)
}

// key identifies an event among those of the same instant.
func (e Event) key() string {
	return e.Type + "/" + e.Action + "/" + e.Actor.ID + "/" + strconv.FormatInt(e.TimeNano, 10) + "/" + e.Actor.Attributes["name"]
}

// eventFilters are the event types the agent asks for.
const eventFilters = `{"type":["image","container","builder"]}`

// Events streams the daemon's events since the given time (zero: from
// now) to fn until ctx ends or the stream breaks; it returns the error
// that ended it. fn is called once the stream's header arrived with a nil
// event (connected), then per event.
func (d *Docker) Events(ctx context.Context, since time.Time, fn func(*Event) error) error {
	q := url.Values{"filters": {eventFilters}}
	if !since.IsZero() {
		// seconds.nanoseconds, which the daemon parses exactly.
		q.Set("since", fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.base+"/v"+DockerAPIVersion+"/events?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("docker /events: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return &DockerError{Path: "/events", Status: resp.StatusCode, Msg: dockerMessage(b)}
	}
	if err := fn(nil); err != nil {
		return err
	}
	return decodeEvents(resp.Body, fn)
}

// decodeEvents reads newline-delimited JSON events from r. A message that
// is not an event object is skipped, and so is one longer than
// maxEventLine (without holding it in memory): one odd line must not stop
// the watch, and ending the stream on it would make every reconnect, which
// resumes at that line, end there again.
func decodeEvents(r io.Reader, fn func(*Event) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var line []byte
	tooLong := false
	for {
		chunk, err := br.ReadSlice('\n')
		switch {
		case tooLong:
		case len(line)+len(chunk) > maxEventLine:
			tooLong, line = true, line[:0]
		default:
			line = append(line, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if !tooLong {
			if ev, ok := parseEvent(line); ok {
				if ferr := fn(&ev); ferr != nil {
					return ferr
				}
			}
		}
		line, tooLong = line[:0], false
		if errors.Is(err, io.EOF) {
			return errors.New("docker /events: stream ended")
		}
		if err != nil {
			return fmt.Errorf("docker /events: %w", err)
		}
	}
}

// parseEvent decodes one line of the event stream; ok is false for a
// blank line or one that is not an event.
func parseEvent(line []byte) (ev Event, ok bool) {
	if len(bytes.TrimSpace(line)) == 0 {
		return ev, false
	}
	if err := json.Unmarshal(line, &ev); err != nil || ev.Type == "" || (ev.Time == 0 && ev.TimeNano == 0) {
		return ev, false
	}
	return ev, true
}
