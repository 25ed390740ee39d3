package nodereport

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"buildguard.dev/buildguard/evidence"
)

// tetragonEvent is the part of one line of Tetragon's JSON export
// (tetragon.GetEventsResponse, protobuf JSON with proto field names) that
// buildguard reads.
type tetragonEvent struct {
	ProcessKprobe *tetragonKprobe `json:"process_kprobe"`
	NodeName      string          `json:"node_name"`
	Time          string          `json:"time"`
}

type tetragonKprobe struct {
	Process      tetragonProcess `json:"process"`
	FunctionName string          `json:"function_name"`
	Args         []tetragonArg   `json:"args"`
}

type tetragonProcess struct {
	ExecID    string          `json:"exec_id"`
	PID       json.RawMessage `json:"pid"`
	Binary    string          `json:"binary"`
	Arguments string          `json:"arguments"`
	Docker    string          `json:"docker"`
	Pod       *struct {
		Container *struct {
			ID string `json:"id"`
		} `json:"container"`
	} `json:"pod"`
}

// tetragonArg is one kprobe argument; only socket arguments are read.
type tetragonArg struct {
	Sock *struct {
		Family string          `json:"family"`
		Daddr  string          `json:"daddr"`
		Dport  json.RawMessage `json:"dport"`
	} `json:"sock_arg"`
	Sockaddr *struct {
		Family string          `json:"family"`
		Addr   string          `json:"addr"`
		Port   json.RawMessage `json:"port"`
	} `json:"sockaddr_arg"`
}

// tetragonEventKeys are the top-level keys of Tetragon's event types; a
// line with none of them and no time is not a Tetragon event.
var tetragonEventKeys = []string{
	"process_exec", "process_exit", "process_kprobe", "process_tracepoint", "process_uprobe",
	"process_lsm", "process_loader", "process_throttle", "rate_limit_info", "test",
}

// isTetragonConnect reports whether a kprobe function is a connect: tcp_connect,
// tcp_v4_connect, tcp_v6_connect, security_socket_connect, or a connect
// syscall (__sys_connect, __x64_sys_connect, …).
func isTetragonConnect(fn string) bool {
	switch fn {
	case "tcp_connect", "tcp_v4_connect", "tcp_v6_connect", "security_socket_connect":
		return true
	}
	return strings.HasSuffix(fn, "sys_connect")
}

// ParseTetragon parses Tetragon's JSON export: newline-delimited events
// (a JSON array of them is accepted too). A process_kprobe event of a
// connect function (tcp_connect, __sys_connect, …) with a sock_arg or
// sockaddr_arg of an IP family becomes a Connection: Process is the
// basename of process.binary, Cmdline the binary and its arguments,
// ContainerID from process.pod.container.id or process.docker, EventID
// process.exec_id with the event time. Every other event, process_exec of
// build tools included, is Ignored: they carry no image ID, which is what
// builds are matched by. node is the fallback for an event without
// node_name. Source is "tetragon", Report.Sensor "tetragon".
func ParseTetragon(body []byte, node string, opts ...ParseOption) (Parsed, error) {
	return parseEvents("tetragon", "tetragon", body, node, opts, tetragonItem)
}

func tetragonItem(raw []byte, node string, now time.Time) (reportItem, error) {
	var keys map[string]json.RawMessage
	if err := decodeItem(raw, &keys, false); err != nil {
		return reportItem{}, err
	}
	known := false
	for _, k := range tetragonEventKeys {
		if _, ok := keys[k]; ok {
			known = true
			break
		}
	}
	if _, ok := keys["time"]; !known && !ok {
		return reportItem{}, errors.New("not a Tetragon event: no event type and no time")
	}
	if jsonValueKind(keys["process_kprobe"]) != "object" {
		return reportItem{}, nil
	}
	var ev tetragonEvent
	if err := decodeItem(raw, &ev, false); err != nil {
		return reportItem{}, err
	}
	kp := ev.ProcessKprobe
	if !isTetragonConnect(kp.FunctionName) {
		return reportItem{}, nil
	}
	c := evidence.Connection{Source: "tetragon"}
	found := false
	for i := 0; i < len(kp.Args) && !found; i++ {
		a := kp.Args[i]
		var family, addr, addrField, portField string
		var port json.RawMessage
		switch {
		case a.Sock != nil:
			family, addr, port = a.Sock.Family, a.Sock.Daddr, a.Sock.Dport
			addrField, portField = fmt.Sprintf("process_kprobe.args[%d].sock_arg.daddr", i), fmt.Sprintf("process_kprobe.args[%d].sock_arg.dport", i)
		case a.Sockaddr != nil:
			family, addr, port = a.Sockaddr.Family, a.Sockaddr.Addr, a.Sockaddr.Port
			addrField, portField = fmt.Sprintf("process_kprobe.args[%d].sockaddr_arg.addr", i), fmt.Sprintf("process_kprobe.args[%d].sockaddr_arg.port", i)
		default:
			continue
		}
		if family != "" && family != "AF_INET" && family != "AF_INET6" {
			return reportItem{}, nil // a unix or netlink socket: not a network connection
		}
		if addr == "" {
			return reportItem{}, fmt.Errorf("%s: missing", addrField)
		}
		var err error
		if c.DestIP, err = parseDestIP(addrField, addr); err != nil {
			return reportItem{}, err
		}
		p, set, err := rawInt(portField, port)
		if err != nil {
			return reportItem{}, err
		}
		if !set {
			return reportItem{}, fmt.Errorf("%s: missing", portField)
		}
		if c.DestPort, err = checkDestPort(portField, p); err != nil {
			return reportItem{}, err
		}
		found = true
	}
	if !found {
		return reportItem{}, fmt.Errorf("process_kprobe: %s without a sock_arg or sockaddr_arg (add one to the tracing policy)", quoteShort(kp.FunctionName))
	}
	if ev.Time == "" {
		return reportItem{}, errors.New("time: missing")
	}
	var err error
	if c.Time, err = parseRFC3339("time", ev.Time, now); err != nil {
		return reportItem{}, err
	}
	p := kp.Process
	pid, _, err := rawInt("process_kprobe.process.pid", p.PID)
	if err != nil {
		return reportItem{}, err
	}
	if c.PID, err = checkItemPID("process_kprobe.process.pid", pid); err != nil {
		return reportItem{}, err
	}
	c.Process = cleanText(pathBase(p.Binary), limName)
	c.Cmdline = cleanText(strings.TrimSpace(p.Binary+" "+p.Arguments), limCmdline)
	if p.Pod != nil && p.Pod.Container != nil {
		c.ContainerID = cleanContainerID(p.Pod.Container.ID)
	}
	if c.ContainerID == "" {
		c.ContainerID = cleanContainerID(p.Docker)
	}
	c.Node = cleanText(ev.NodeName, limName)
	if c.Node == "" {
		c.Node = node
	}
	if execID := cleanText(p.ExecID, len(p.ExecID)+1); execID != "" {
		c.EventID = composedID(execID, c.Time.Format(time.RFC3339Nano))
	} else {
		c.EventID = canonicalID("tetragon\n", raw)
	}
	return reportItem{conn: &c}, nil
}
