package nodereport

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/clock/clocktest"
)

// TestAgentReportRoundTrip writes a NodeReport as the node agent does, with
// every field of every type set, and reads it back as the server does:
// every field the agent can send must arrive. A field added to the wire
// types and not read by ParseAgent fails here.
func TestAgentReportRoundTrip(t *testing.T) {
	const (
		img = "sha256:aa48458587ecea4728d4d28198a78ba1f6159b33f48705acb86d5bdaee7f926e"
		cid = "97f9e3b0ab388674b425f21cd8da8da005f936b2abd2d3c6bfd978a578293c1e"
	)
	started := time.Date(2026, 11, 26, 10, 14, 58, 123456789, time.UTC)
	sent := NewReport("worker-3", "ebpf")
	sent.Builds = []Build{{
		EventID: "docker-build/" + img, Tool: "docker", ImageID: img, Tags: []string{"reg/repo:1"},
		Started: Time(started), Finished: Time(started.Add(time.Minute)), PIDs: []int{123, 124},
		ContainerIDs: []string{cid}, CgroupID: "10422", Steps: []string{"RUN make"},
	}}
	sent.Connections = []Connection{{
		EventID: "procfs/4242/1/203.0.113.9:8080", Time: Time(started.Add(time.Second)), Process: "wget", PID: 4242,
		Cmdline: "wget http://mirror.example.net:8080/x", ContainerID: cid, CgroupID: "10422",
		DestIP: "203.0.113.9", DestPort: 8080, DestName: "mirror.example.net",
	}}
	for _, v := range []any{sent, sent.Builds[0], sent.Connections[0]} {
		rv := reflect.ValueOf(v)
		for i := range rv.NumField() {
			if rv.Field(i).IsZero() {
				t.Fatalf("%s.%s is not set: the test must send every field", rv.Type().Name(), rv.Type().Field(i).Name)
			}
		}
	}
	body, err := json.Marshal(sent)
	if err != nil {
		t.Fatal(err)
	}

	got, err := ParseAgent(body, ParseClock(clocktest.New(started)))
	if err != nil {
		t.Fatalf("ParseAgent(%s): %v", body, err)
	}
	want := Parsed{Report: evidence.Report{Node: "worker-3", Sensor: "ebpf",
		Builds: []evidence.Build{{
			Source: "agent", EventID: "docker-build/" + img, Node: "worker-3", Tool: "docker", ImageID: img, Tags: []string{"reg/repo:1"},
			Started: started, Finished: started.Add(time.Minute), PIDs: []int{123, 124},
			ContainerIDs: []string{cid}, CgroupID: "10422", Steps: []string{"RUN make"},
		}},
		Connections: []evidence.Connection{{
			Source: "agent", EventID: "procfs/4242/1/203.0.113.9:8080", Node: "worker-3", Time: started.Add(time.Second), Process: "wget", PID: 4242,
			Cmdline: "wget http://mirror.example.net:8080/x", ContainerID: cid, CgroupID: "10422",
			DestIP: netip.MustParseAddr("203.0.113.9"), DestPort: 8080, DestName: "mirror.example.net",
		}},
	}}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("ParseAgent(the agent's report) mismatch (-want +got):\n%s", diff)
	}
}

// TestRawReportIsReport checks that ParseAgent's envelope has Report's
// fields, in order, with Report's JSON names.
func TestRawReportIsReport(t *testing.T) {
	fields := func(v any) []string {
		var out []string
		rt := reflect.TypeOf(v)
		for i := range rt.NumField() {
			out = append(out, rt.Field(i).Name+" "+string(rt.Field(i).Tag))
		}
		return out
	}
	if diff := cmp.Diff(fields(Report{}), fields(rawReport{})); diff != "" {
		t.Errorf("rawReport's fields are not Report's (-Report +rawReport):\n%s", diff)
	}
}
