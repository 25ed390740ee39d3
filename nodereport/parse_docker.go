package nodereport

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"buildguard.dev/buildguard/evidence"
)

// dockerEvent is one message of the Docker Engine API's GET /events
// (events.Message). status and id are the deprecated names of Action and
// Actor.ID; an event without Type (API < 1.22) is ignored.
type dockerEvent struct {
	Type   string `json:"Type"`
	Action string `json:"Action"`
	Actor  struct {
		ID         string            `json:"ID"`
		Attributes map[string]string `json:"Attributes"`
	} `json:"Actor"`
	Time     json.RawMessage `json:"time"`
	TimeNano json.RawMessage `json:"timeNano"`
	// Deprecated fields that older daemons send alongside (or instead of) the above.
	Status string `json:"status"`
	ID     string `json:"id"`
}

// dockerImageBuildActions are the image actions that make a new image on
// the node: BuildKit's export and, with the containerd image store, a
// commit "create" it (Docker 25 and later), docker import makes one from
// a root file system. Not tag, not load: a tag names an image whoever
// made it (a pipeline image pulled and tagged on a worker), and docker
// load brings an image made elsewhere, as a pull does.
var dockerImageBuildActions = map[string]bool{
	"create": true, "import": true, "build": true,
}

// ParseDocker parses Docker Engine /events messages, one JSON object per
// line or a JSON array of them, into Builds:
//   - image create, import (and build): a Build of Actor.ID, the image ID,
//     with the tag in Attributes.name;
//   - container commit (docker commit): a Build of Attributes.imageID with
//     Attributes.imageRef as its tag and the committed container in
//     ContainerIDs;
//   - builder events (other than prune) whose Actor.ID is an image ID.
//
// Started and Finished are both the event's time (timeNano, else time).
// Other events — tag and load (they say an image is on the node, not
// that it was built there), pull, push, untag, delete, container create
// and start (a build step's container cannot be told from any other by
// its event), networks, volumes — are Ignored. The events carry no node: node names
// the node they came from and is every item's Node. Source is "docker",
// Report.Sensor "docker-events".
func ParseDocker(body []byte, node string, opts ...ParseOption) (Parsed, error) {
	return parseEvents("docker", "docker-events", body, node, opts, dockerItem)
}

func dockerItem(raw []byte, node string, now time.Time) (reportItem, error) {
	var ev dockerEvent
	if err := decodeItem(raw, &ev, false); err != nil {
		return reportItem{}, err
	}
	typ, action, actorID := ev.Type, ev.Action, ev.Actor.ID
	if action == "" {
		action = ev.Status
	}
	if actorID == "" {
		actorID = ev.ID
	}
	if typ == "" && action == "" {
		return reportItem{}, errors.New("not a Docker event: no Type, Action or status")
	}
	// "exec_start: sh -c …", "health_status: healthy"
	if i := strings.Index(action, ":"); i >= 0 {
		action = action[:i]
	}
	attrs := ev.Actor.Attributes

	b := evidence.Build{Source: "docker", Node: node, Tool: "docker"}
	switch {
	case typ == "image" && dockerImageBuildActions[action]:
		id, ok := normImageID(actorID)
		if !ok {
			return reportItem{}, fmt.Errorf("Actor.ID: %s is not an image ID (sha256:<64 hex>)", quoteShort(actorID))
		}
		b.ImageID = id
		if name := attrs["name"]; name != "" {
			if _, isID := normImageID(name); !isID {
				b.Tags = cleanTags([]string{name})
			}
		}
	case typ == "container" && action == "commit":
		id, ok := normImageID(attrs["imageID"])
		if !ok {
			return reportItem{}, fmt.Errorf("Actor.Attributes.imageID: %s is not an image ID (sha256:<64 hex>)", quoteShort(attrs["imageID"]))
		}
		b.ImageID = id
		b.Tags = cleanTags([]string{attrs["imageRef"]})
		if c := cleanContainerID(actorID); c != "" {
			b.ContainerIDs = []string{c}
		}
	case typ == "builder" && action != "prune":
		id, ok := normImageID(actorID)
		if !ok {
			return reportItem{}, nil
		}
		b.ImageID = id
	default:
		return reportItem{}, nil
	}

	nanos, hasNanos, err := rawInt("timeNano", ev.TimeNano)
	if err != nil {
		return reportItem{}, err
	}
	secs, hasSecs, err := rawInt("time", ev.Time)
	if err != nil {
		return reportItem{}, err
	}
	var stamp int64
	switch {
	case hasNanos:
		stamp = nanos
		b.Started, err = unixNanoTime("timeNano", stamp, now)
	case hasSecs:
		if secs <= 0 || secs > 1<<33 {
			return reportItem{}, fmt.Errorf("time: %d is not a time in seconds after 1970", secs)
		}
		stamp = secs * int64(time.Second)
		b.Started, err = unixNanoTime("time", stamp, now)
	default:
		return reportItem{}, errors.New("no timeNano or time")
	}
	if err != nil {
		return reportItem{}, err
	}
	b.Finished = b.Started
	name := attrs["name"]
	if typ == "container" {
		name = attrs["imageRef"]
	}
	b.EventID = composedID(typ, action, cleanText(actorID, len(actorID)+1), strconv.FormatInt(stamp, 10), cleanText(name, len(name)+1))
	return reportItem{build: &b}, nil
}
