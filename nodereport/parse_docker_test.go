package nodereport

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"buildguard.dev/buildguard/evidence"
)

func TestParseDocker(t *testing.T) {
	const (
		app    = "sha256:aa48458587ecea4728d4d28198a78ba1f6159b33f48705acb86d5bdaee7f926e"
		base   = "sha256:cae662172fd450bb0cd710a769079c05bfc5d8e35efa6576edc7d0377afdd4a2"
		commit = "sha256:9505cacb7c710ed17125fcc6cb3669e8ddca6c8cd8af6a31f6b3cd64604c3098"
		cid    = "6d381be6459ed1b24792d5a84343359c1452336d45b441b34c3cb16e2612360c"
		stamp  = "1795688169000000000"
		when   = "2026-11-26T10:16:09Z"
	)
	event := func(typ, action, id, attrs string) string {
		return `{"Type":"` + typ + `","Action":"` + action + `","Actor":{"ID":"` + id + `","Attributes":{` + attrs + `}},"scope":"local","time":1795688169,"timeNano":` + stamp + `}`
	}
	build := func(b evidence.Build) evidence.Build {
		b.Source, b.Node, b.Tool = "docker", "worker-3", "docker"
		if b.Started.IsZero() {
			b.Started = wantTime(when)
		}
		b.Finished = b.Started
		return b
	}
	one := func(b evidence.Build) Parsed {
		return Parsed{Report: evidence.Report{Node: "worker-3", Sensor: "docker-events", Builds: []evidence.Build{build(b)}}}
	}
	ignored := Parsed{Report: evidence.Report{Node: "worker-3", Sensor: "docker-events"}, Ignored: 1}
	failed := func(reason string) Parsed {
		return Parsed{Report: evidence.Report{Node: "worker-3", Sensor: "docker-events"}, Errors: []ItemError{{0, reason}}}
	}
	for _, tc := range []struct {
		name string
		body string
		node string // "worker-3" when empty
		want Parsed
	}{
		// A tag names an image, whoever made it: a pipeline image pulled
		// and tagged on a worker was not built there.
		{name: "image tag is not a build", body: event("image", "tag", app, `"name":"registry.acme.internal/shop/api:1.4.2"`), want: ignored},
		{name: "load is not a build", body: `{"Type":"image","Action":"load","Actor":{"ID":"` + base + `","Attributes":{"name":"` + base + `"}},"time":1795688100}`, want: ignored},
		{name: "image create with a tag", body: event("image", "create", app, `"name":"registry.acme.internal/shop/api:1.4.2"`),
			want: one(evidence.Build{EventID: sha256ID([]byte("image/create/" + app + "/" + stamp + "/registry.acme.internal/shop/api:1.4.2")), ImageID: app,
				Tags: []string{"registry.acme.internal/shop/api:1.4.2"}})},
		{name: "image create names itself", body: event("image", "create", app, `"name":"`+app+`","org.opencontainers.image.source":"https://git.acme.internal/shop/api"`),
			want: one(evidence.Build{EventID: sha256ID([]byte("image/create/" + app + "/" + stamp + "/" + app)), ImageID: app})},
		{name: "import of a bare ID, deprecated fields", body: `{"status":"import","id":"` + base[7:] + `","Type":"image","Action":"import","Actor":{"ID":"` + base[7:] + `","Attributes":{"name":"busybox-static:1.36"}},"time":1795688090,"timeNano":1795688090000000000}`,
			want: one(evidence.Build{EventID: "image/import/" + base[7:] + "/1795688090000000000/busybox-static:1.36", ImageID: base, Tags: []string{"busybox-static:1.36"}, Started: wantTime("2026-11-26T10:14:50Z")})},
		{name: "import with time in seconds only", body: `{"Type":"image","Action":"import","Actor":{"ID":"` + base + `","Attributes":{"name":"` + base + `"}},"time":1795688100}`,
			want: one(evidence.Build{EventID: sha256ID([]byte("image/import/" + base + "/1795688100000000000/" + base)), ImageID: base, Started: wantTime("2026-11-26T10:15:00Z")})},
		{name: "timeNano as a string", body: `{"Type":"image","Action":"create","Actor":{"ID":"` + app + `","Attributes":{"name":"r/x:1"}},"timeNano":"` + stamp + `"}`,
			want: one(evidence.Build{EventID: "image/create/" + app + "/" + stamp + "/r/x:1", ImageID: app, Tags: []string{"r/x:1"}})},
		{name: "container commit", body: event("container", "commit", cid, `"comment":"","image":"`+base+`","imageID":"`+commit+`","imageRef":"localhost/hotfix:1","name":"vigilant_hopper"`),
			want: one(evidence.Build{EventID: "container/commit/" + cid + "/" + stamp + "/localhost/hotfix:1", ImageID: commit,
				Tags: []string{"localhost/hotfix:1"}, ContainerIDs: []string{cid}})},
		{name: "commit without a tag", body: event("container", "commit", cid, `"imageID":"`+commit+`","imageRef":""`),
			want: one(evidence.Build{EventID: "container/commit/" + cid + "/" + stamp + "/", ImageID: commit, ContainerIDs: []string{cid}})},
		{name: "builder event with an image ID", body: event("builder", "build", app, ``),
			want: one(evidence.Build{EventID: "builder/build/" + app + "/" + stamp + "/", ImageID: app})},
		{name: "builder prune", body: event("builder", "prune", "", `"reclaimed":"0"`), want: ignored},
		{name: "container start", body: event("container", "start", cid, `"image":"`+base+`","name":"vigilant_hopper"`), want: ignored},
		{name: "exec_start with a command", body: event("container", "exec_start: sh -c wget http://x", cid, ``), want: ignored},
		{name: "pull", body: event("image", "pull", "debian:12-slim", `"name":"debian"`), want: ignored},
		{name: "push", body: event("image", "push", "registry.acme.internal/shop/api:1.4.2", `"name":"registry.acme.internal/shop/api"`), want: ignored},
		{name: "legacy event without Type", body: `{"status":"tag","id":"` + app + `","time":1795688169}`, want: ignored},
		{name: "create of a non-ID", body: event("image", "create", "registry.acme.internal/shop/api:1.4.2", `"name":"r/x:2"`),
			want: failed(`Actor.ID: "registry.acme.internal/shop/api:1.4.2" is not an image ID (sha256:<64 hex>)`)},
		{name: "commit without imageID", body: event("container", "commit", cid, `"imageRef":"x:1"`),
			want: failed(`Actor.Attributes.imageID: "" is not an image ID (sha256:<64 hex>)`)},
		{name: "no time", body: `{"Type":"image","Action":"create","Actor":{"ID":"` + app + `"}}`, want: failed("no timeNano or time")},
		{name: "time in the future", body: strings.Replace(event("image", "create", app, ``), stamp, "1795888169000000000", 1),
			want: failed("timeNano: 2026-11-28T17:49:29Z is 53h49m29s in the future (more than 24h0m0s)")},
		{name: "huge timeNano", body: strings.Replace(event("image", "create", app, ``), stamp, "99999999999999999999", 1),
			want: failed(`timeNano: want an integer, got "99999999999999999999"`)},
		{name: "negative time", body: `{"Type":"image","Action":"create","Actor":{"ID":"` + app + `"},"time":-5}`,
			want: failed("time: -5 is not a time in seconds after 1970")},
		{name: "attributes of the wrong type", body: event("image", "create", app, `"name":1`),
			want: failed("Actor.Attributes: want a string, got number")},
		{name: "not a Docker event", body: `{"scope":"local"}`, want: failed("not a Docker event: no Type, Action or status")},
		{name: "no node", body: event("image", "create", app, ``), node: "-",
			want: Parsed{Report: evidence.Report{Sensor: "docker-events"}, Errors: []ItemError{{0, "no node: the event names none and the request gave none"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := tc.node
			switch node {
			case "":
				node = "worker-3"
			case "-":
				node = ""
			}
			got, err := ParseDocker([]byte(tc.body), node, parseTestClock())
			checkParsed(t, "docker", []byte(tc.body), got, err)
			if err != nil {
				t.Fatalf("ParseDocker(%s) error: %v", tc.body, err)
			}
			if diff := cmp.Diff(tc.want, got, exact); diff != "" {
				t.Errorf("ParseDocker(%s) (-want +got):\n%s", tc.body, diff)
			}
		})
	}
}
