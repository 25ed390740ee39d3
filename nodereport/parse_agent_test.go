package nodereport

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"buildguard.dev/buildguard/evidence"
)

func agentBody(builds, conns string) string {
	return `{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":"worker-3","sensor":"ebpf",` +
		`"builds":[` + builds + `],"connections":[` + conns + `]}`
}

func TestParseAgent(t *testing.T) {
	const (
		img  = "sha256:aa48458587ecea4728d4d28198a78ba1f6159b33f48705acb86d5bdaee7f926e"
		cid  = "97f9e3b0ab388674b425f21cd8da8da005f936b2abd2d3c6bfd978a578293c1e"
		noID = `{"time":"2026-11-26T10:15:03Z","destIP":"203.0.113.9","destPort":8080}`
	)
	report := func(b []evidence.Build, c []evidence.Connection) evidence.Report {
		return evidence.Report{Node: "worker-3", Sensor: "ebpf", Builds: b, Connections: c}
	}
	for _, tc := range []struct {
		name string
		body string
		want Parsed
	}{
		{
			name: "build and connection",
			body: agentBody(
				`{"eventID":"b1","tool":"docker","imageID":"`+img+`","tags":["reg/repo:1",""],"started":"2026-11-26T10:14:58Z",`+
					`"finished":"2026-11-26T11:16:09+01:00","pids":[123,0],"containerIDs":["docker://`+cid+`"],"cgroupID":"10422","steps":["RUN wget http://203.0.113.9:8080/x"]}`,
				`{"eventID":"c1","time":"2026-11-26T10:15:03.412907311Z","process":"wget","pid":4242,"cmdline":"wget\u0000http://203.0.113.9:8080/x",`+
					`"containerID":"`+cid+`","cgroupID":"10422","destIP":"::ffff:203.0.113.9","destPort":8080,"destName":""}`),
			want: Parsed{Report: report(
				[]evidence.Build{{Source: "agent", EventID: "b1", Node: "worker-3", Tool: "docker", ImageID: img, Tags: []string{"reg/repo:1"},
					Started: wantTime("2026-11-26T10:14:58Z"), Finished: wantTime("2026-11-26T10:16:09Z"), PIDs: []int{123}, ContainerIDs: []string{cid},
					CgroupID: "10422", Steps: []string{"RUN wget http://203.0.113.9:8080/x"}}},
				[]evidence.Connection{{Source: "agent", EventID: "c1", Node: "worker-3", Time: wantTime("2026-11-26T10:15:03.412907311Z"), Process: "wget", PID: 4242,
					Cmdline: "wget http://203.0.113.9:8080/x", ContainerID: cid, CgroupID: "10422", DestIP: wantIP("203.0.113.9"), DestPort: 8080}},
			)},
		},
		{
			name: "no eventID: SHA-256 of the canonical item",
			body: agentBody(``, noID),
			want: Parsed{Report: report(nil, []evidence.Connection{{Source: "agent", EventID: canonicalID("agent connection\nworker-3\n", []byte(noID)),
				Node: "worker-3", Time: wantTime("2026-11-26T10:15:03Z"), DestIP: wantIP("203.0.113.9"), DestPort: 8080}})},
		},
		{
			name: "empty report",
			body: `{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":"worker-3","sensor":"procfs"}`,
			want: Parsed{Report: evidence.Report{Node: "worker-3", Sensor: "procfs"}},
		},
		{
			name: "bad items among good",
			body: agentBody(
				`{"tool":"docker","started":"2026-11-26T10:00:00Z"},{"started":"2026-11-26T10:00:00Z"},{"tool":"docker"},`+
					`{"tool":"docker","started":"2026-11-26T10:00:00Z","pids":[99999999]},{"tool":"docker","started":"2026-11-26T10:00:00Z","imageID":"sha256:AB"}`,
				`{"time":"2026-11-26T10:00:00Z","destIP":"fe80::1%eth0","destPort":443,"eventID":"z"},`+
					`{"time":"2026-11-26T10:00:00Z","destIP":"203.0.113.9"},{"time":"2026-11-26T10:00:00Z","destIP":"203.0.113.9","destPort":-1},`+
					`{"time":"2026-11-26T10:00:00Z","destIP":"203.0.113.9","destPort":1e30},{"time":"2026-11-26T10:00:00Z","destIP":"","destPort":1},`+
					`{"time":"2027-01-01T00:00:00Z","destIP":"203.0.113.9","destPort":1},{"time":1795688103,"destIP":"203.0.113.9","destPort":1},[]`),
			want: Parsed{
				Report: report(
					[]evidence.Build{{Source: "agent", EventID: canonicalID("agent build\nworker-3\n", []byte(`{"tool":"docker","started":"2026-11-26T10:00:00Z"}`)),
						Node: "worker-3", Tool: "docker", Started: wantTime("2026-11-26T10:00:00Z")}},
					[]evidence.Connection{{Source: "agent", EventID: "z", Node: "worker-3", Time: wantTime("2026-11-26T10:00:00Z"), DestIP: wantIP("fe80::1"), DestPort: 443}},
				),
				Errors: []ItemError{
					{1, "builds[1]: tool: missing"},
					{2, "builds[2]: started: missing"},
					{3, "builds[3]: pids[0]: 99999999 is not a process ID (0..4194304)"},
					{4, `builds[4]: imageID: "sha256:AB" is not an image ID (sha256:<64 lowercase hex>)`},
					{6, "connections[1]: destPort: missing"},
					{7, "connections[2]: destPort: -1 is not a port (1..65535)"},
					{8, "connections[3]: destPort: want an integer in range, got number 1e30"},
					{9, "connections[4]: destIP: missing"},
					{10, "connections[5]: time: 2027-01-01T00:00:00Z is 852h0m0s in the future (more than 24h0m0s)"},
					{11, "connections[6]: time: want a string, got number"},
					{12, "connections[7]: want a JSON object, got array"},
				},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAgent([]byte(tc.body), parseTestClock())
			checkParsed(t, "agent", []byte(tc.body), got, err)
			if err != nil {
				t.Fatalf("ParseAgent(%s) error: %v", tc.body, err)
			}
			if diff := cmp.Diff(tc.want, got, exact); diff != "" {
				t.Errorf("ParseAgent(%s) (-want +got):\n%s\nerrors:\n%s", tc.body, diff, itemReasons(got))
			}
			again, _ := ParseAgent([]byte(tc.body), parseTestClock())
			if diff := cmp.Diff(got, again, exact); diff != "" {
				t.Errorf("ParseAgent(%s) twice (-first +second):\n%s", tc.body, diff)
			}
		})
	}
}

func TestParseAgentFormatErrors(t *testing.T) {
	ok := agentBody(`{"tool":"docker","started":"2026-11-26T10:00:00Z"}`, `{"time":"2026-11-26T10:00:00Z","destIP":"203.0.113.9","destPort":1}`)
	for _, tc := range []struct {
		name, body, want string
	}{
		{"empty", "", "empty body"},
		{"not JSON", "apiVersion: buildguard.dev/v1alpha1", "got something that is not JSON"},
		{"array", "[" + ok + "]", "want a NodeReport object, got array"},
		{"truncated", ok[:len(ok)-10], "truncated JSON"},
		{"unknown field", strings.Replace(ok, `"sensor"`, `"nodeName":"x","sensor"`, 1), `unknown field "nodeName"`},
		{"wrong apiVersion", strings.Replace(ok, "v1alpha1", "v1", 1), `apiVersion: want "buildguard.dev/v1alpha1", got "buildguard.dev/v1"`},
		{"wrong kind", strings.Replace(ok, `"NodeReport"`, `"Report"`, 1), `kind: want "NodeReport", got "Report"`},
		{"no node", strings.Replace(ok, `"worker-3"`, `" "`, 1), "node: missing"},
		{"long node", strings.Replace(ok, `"worker-3"`, `"`+strings.Repeat("n", 254)+`"`, 1), "node: longer than 253 bytes"},
		{"bad sensor", strings.Replace(ok, `"ebpf"`, `"eBPF probe"`, 1), `sensor: want a short lowercase name`},
		{"builds not an array", `{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":"n","sensor":"ebpf","builds":{"a":1}}`, "builds: want an array, got object"},
		{"data after", ok + "{}", "data after the NodeReport object"},
		{"too many items", agentBody(`{},{}`, `{}`), "3 items (builds and connections) in one report, more than 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseAgent([]byte(tc.body), parseTestClock(), ParseMaxItems(2))
			checkParsed(t, "agent", []byte(tc.body), got, err)
			var fe *FormatError
			if !errors.As(err, &fe) || !strings.Contains(fe.Reason, tc.want) {
				t.Fatalf("ParseAgent(%s) = %+v, %v; want a FormatError containing %q", tc.body, got, err, tc.want)
			}
			if tooMany := strings.Contains(tc.want, "items"); errors.Is(err, ErrTooManyItems) != tooMany {
				t.Errorf("errors.Is(ParseAgent(%s), ErrTooManyItems) = %v, want %v", tc.body, !tooMany, tooMany)
			}
		})
	}
}
