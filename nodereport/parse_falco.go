package nodereport

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"buildguard.dev/buildguard/evidence"
)

// falcoAlert is the part of a Falco JSON alert (json_output: true) and of
// a falcosidekick webhook payload that buildguard reads.
type falcoAlert struct {
	UUID         string                     `json:"uuid"`
	Rule         string                     `json:"rule"`
	Time         string                     `json:"time"`
	Source       string                     `json:"source"`
	Hostname     string                     `json:"hostname"`
	OutputFields map[string]json.RawMessage `json:"output_fields"`
}

// ParseFalco parses Falco JSON alerts: one alert, newline-delimited
// alerts, a JSON array of alerts, or falcosidekick's webhook payload (an
// alert with a uuid). An alert whose output_fields carry a remote IP
// address (fd.rip, fd.sip, or the server side of fd.name) becomes a
// Connection; any other alert — another source than syscall, an inbound
// connection (evt.type accept, accept4 or listen), a non-IP descriptor, a
// rule about files or processes — is Ignored. node is the fallback for an
// alert that names no node (k8s.node.name, k8smeta.node.name or hostname).
// Source is "falco", Report.Sensor "falco".
func ParseFalco(body []byte, node string, opts ...ParseOption) (Parsed, error) {
	return parseEvents("falco", "falco", body, node, opts, falcoItem)
}

func falcoItem(raw []byte, node string, now time.Time) (reportItem, error) {
	var a falcoAlert
	if err := decodeItem(raw, &a, false); err != nil {
		return reportItem{}, err
	}
	if strings.TrimSpace(a.Rule) == "" {
		return reportItem{}, errors.New("not a Falco alert: no rule")
	}
	if a.Source != "" && a.Source != "syscall" {
		return reportItem{}, nil // plugin sources (k8s_audit, cloudtrail, …) carry no connections
	}
	f := falcoFields(a.OutputFields)
	switch evt, err := f.str("evt.type"); {
	case err != nil:
		return reportItem{}, err
	case evt == "accept" || evt == "accept4" || evt == "listen":
		return reportItem{}, nil // inbound: the remote end is the client
	}
	if typ, err := f.str("fd.type"); err != nil {
		return reportItem{}, err
	} else if typ != "" && typ != "ipv4" && typ != "ipv6" {
		return reportItem{}, nil // a file, a unix socket, …
	}

	dest, port, hasDest, err := f.destination()
	if err != nil || !hasDest {
		return reportItem{}, err
	}
	c := evidence.Connection{Source: "falco", DestIP: dest}
	if port == 0 {
		return reportItem{}, errors.New("output_fields: a destination IP without a port (fd.rport, fd.sport or fd.name)")
	}
	if c.DestPort, err = checkDestPort("output_fields: destination port", port); err != nil {
		return reportItem{}, err
	}

	switch {
	case a.Time != "":
		if c.Time, err = parseRFC3339("time", a.Time, now); err != nil {
			return reportItem{}, err
		}
	default:
		ns, ok, err := f.integer("evt.time")
		if err != nil {
			return reportItem{}, err
		}
		if !ok {
			return reportItem{}, errors.New("time: missing (and no output_fields evt.time)")
		}
		if c.Time, err = unixNanoTime("output_fields: evt.time", ns, now); err != nil {
			return reportItem{}, err
		}
	}
	if pid, ok, err := f.integer("proc.pid"); err != nil {
		return reportItem{}, err
	} else if ok {
		if c.PID, err = checkItemPID("output_fields: proc.pid", pid); err != nil {
			return reportItem{}, err
		}
	}
	strs := []struct {
		dst   *string
		keys  []string
		limit int
	}{
		{&c.Process, []string{"proc.name"}, limName},
		{&c.Cmdline, []string{"proc.cmdline"}, limCmdline},
		{&c.ContainerID, []string{"container.full_id", "container.id"}, limID},
		{&c.DestName, []string{"fd.rip.name", "fd.sip.name"}, limName},
		{&c.Node, []string{"k8s.node.name", "k8smeta.node.name"}, limName},
	}
	for _, s := range strs {
		v, err := f.first(s.keys...)
		if err != nil {
			return reportItem{}, err
		}
		*s.dst = cleanText(v, s.limit)
	}
	c.ContainerID = cleanContainerID(c.ContainerID)
	if c.Node == "" {
		c.Node = cleanText(a.Hostname, limName)
	}
	if c.Node == "" {
		c.Node = node
	}
	c.EventID = cleanEventID(a.UUID)
	if c.EventID == "" {
		c.EventID = canonicalID("falco\n", raw)
	}
	return reportItem{conn: &c}, nil
}

// falcoFields are an alert's output_fields. Falco writes a field it could
// not resolve as null or "<NA>"; both read as absent.
type falcoFields map[string]json.RawMessage

// str reads a field as text: a string, or a number as written.
func (f falcoFields) str(key string) (string, error) {
	raw, ok := f[key]
	if !ok {
		return "", nil
	}
	switch k := jsonValueKind(raw); k {
	case "null":
		return "", nil
	case "number":
		return strings.TrimSpace(string(raw)), nil
	case "string":
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fmt.Errorf("output_fields: %s: %s", key, describeJSONError(err))
		}
		if s = strings.TrimSpace(s); s == "<NA>" {
			return "", nil
		}
		return s, nil
	default:
		return "", fmt.Errorf("output_fields: %s: want a string or a number, got %s", key, k)
	}
}

// first is the first of keys that is present.
func (f falcoFields) first(keys ...string) (string, error) {
	for _, k := range keys {
		v, err := f.str(k)
		if err != nil || v != "" {
			return v, err
		}
	}
	return "", nil
}

func (f falcoFields) integer(key string) (int64, bool, error) {
	raw, ok := f[key]
	if !ok {
		return 0, false, nil
	}
	v, set, err := jsonIntValue(raw)
	if err != nil {
		return 0, false, fmt.Errorf("output_fields: %s: %v", key, err)
	}
	return v, set, nil
}

// destination is the remote end of the alert's connection: fd.rip (or
// fd.sip) and fd.rport (or fd.sport), else the server side of fd.name
// ("10.0.0.5:43210->203.0.113.9:8080"). hasDest is false when the alert
// names no remote IP address at all.
func (f falcoFields) destination() (ip netip.Addr, port int64, hasDest bool, err error) {
	for _, k := range []string{"fd.rip", "fd.sip"} {
		text, err := f.str(k)
		if err != nil {
			return netip.Addr{}, 0, false, err
		}
		if text != "" {
			if ip, err = parseDestIP("output_fields: "+k, text); err != nil {
				return netip.Addr{}, 0, false, err
			}
			break
		}
	}
	for _, k := range []string{"fd.rport", "fd.sport"} {
		p, ok, err := f.integer(k)
		if err != nil {
			return netip.Addr{}, 0, false, err
		}
		if ok {
			port = p
			break
		}
	}
	name, err := f.str("fd.name")
	if err != nil {
		return netip.Addr{}, 0, false, err
	}
	if ip.IsValid() && port != 0 {
		return ip, port, true, nil
	}
	if nameIP, namePort, ok := falcoServerEnd(name); ok {
		if !ip.IsValid() {
			ip = nameIP
		}
		if port == 0 {
			port = namePort
		}
	} else if !ip.IsValid() && strings.Contains(name, "->") {
		typ, _ := f.str("fd.type")
		if typ == "ipv4" || typ == "ipv6" {
			return netip.Addr{}, 0, false, fmt.Errorf("output_fields: fd.name: %s has no IP address and port after \"->\"", quoteShort(name))
		}
	}
	return ip, port, ip.IsValid(), nil
}

// falcoServerEnd parses the part of a Falco fd.name after "->": "ip:port",
// "[ipv6]:port", or Falco's unbracketed "ipv6:port".
func falcoServerEnd(name string) (netip.Addr, int64, bool) {
	i := strings.LastIndex(name, "->")
	if i < 0 {
		return netip.Addr{}, 0, false
	}
	end := strings.TrimSpace(name[i+2:])
	if ap, err := netip.ParseAddrPort(end); err == nil {
		return ap.Addr().Unmap().WithZone(""), int64(ap.Port()), true
	}
	j := strings.LastIndexByte(end, ':')
	if j < 0 {
		return netip.Addr{}, 0, false
	}
	a, err := netip.ParseAddr(end[:j])
	if err != nil {
		return netip.Addr{}, 0, false
	}
	p, err := strconv.ParseInt(end[j+1:], 10, 64)
	if err != nil {
		return netip.Addr{}, 0, false
	}
	return a.Unmap().WithZone(""), p, true
}
