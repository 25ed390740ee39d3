package nodereport

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"time"

	"buildguard.dev/buildguard/evidence"
)

// agentSensor is what a NodeReport's sensor may be: a short lowercase token
// such as "ebpf" or "procfs".
var agentSensor = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// ParseAgent parses a NodeReport, the JSON buildguard's node agent sends
// (docs/node-reports.md). The envelope is decoded strictly: an unknown
// field, a wrong apiVersion or kind, a missing node or sensor, or more
// than the item cap is a *FormatError. Each build and connection is then
// decoded on its own, also strictly; one that fails is an ItemError. Every
// item takes the envelope's node; Source is "agent" and Report.Sensor is
// the envelope's sensor.
func ParseAgent(body []byte, opts ...ParseOption) (Parsed, error) {
	cfg := newParseConfig(opts)
	fail := func(format string, args ...any) (Parsed, error) {
		return Parsed{}, &FormatError{Format: "agent", Reason: cleanText(fmt.Sprintf(format, args...), limReason)}
	}
	trimmed := bytes.TrimSpace(bytes.TrimPrefix(body, []byte("\xef\xbb\xbf")))
	if len(trimmed) == 0 {
		return fail("empty body")
	}
	if k := jsonValueKind(trimmed); k != "object" {
		return fail("want a %s object, got %s", AgentKind, k)
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	dec.DisallowUnknownFields()
	var env rawReport
	if err := dec.Decode(&env); err != nil {
		return fail("%s", describeJSONError(err))
	}
	if _, err := dec.Token(); err != io.EOF {
		return fail("data after the %s object", AgentKind)
	}
	switch {
	case env.APIVersion != AgentAPIVersion:
		return fail("apiVersion: want %q, got %s", AgentAPIVersion, quoteShort(env.APIVersion))
	case env.Kind != AgentKind:
		return fail("kind: want %q, got %s", AgentKind, quoteShort(env.Kind))
	}
	node := cleanText(env.Node, len(env.Node)+1)
	switch {
	case node == "":
		return fail("node: missing")
	case len(node) > limName:
		return fail("node: longer than %d bytes", limName)
	case !agentSensor.MatchString(env.Sensor):
		return fail("sensor: want a short lowercase name such as \"ebpf\" or \"procfs\", got %s", quoteShort(env.Sensor))
	}
	if n := len(env.Builds) + len(env.Connections); n > cfg.maxItems {
		return Parsed{}, &FormatError{Format: "agent", Err: ErrTooManyItems,
			Reason: fmt.Sprintf("%d items (builds and connections) in one report, more than %d; send smaller batches", n, cfg.maxItems)}
	}

	s := itemSink{now: cfg.clock.Now().UTC()}
	s.out.Report = evidence.Report{Node: node, Sensor: env.Sensor}
	for i, raw := range env.Builds {
		b, err := agentBuildItem(raw, node, s.now)
		s.add(i, "builds["+strconv.Itoa(i)+"]", reportItem{build: b}, err)
	}
	for i, raw := range env.Connections {
		c, err := agentConnectionItem(raw, node, s.now)
		s.add(len(env.Builds)+i, "connections["+strconv.Itoa(i)+"]", reportItem{conn: c}, err)
	}
	return s.out, nil
}

func agentBuildItem(raw []byte, node string, now time.Time) (*evidence.Build, error) {
	if k := jsonValueKind(raw); k != "object" {
		return nil, fmt.Errorf("want a JSON object, got %s", k)
	}
	var in Build
	if err := decodeItem(raw, &in, true); err != nil {
		return nil, err
	}
	b := evidence.Build{
		Source:       "agent",
		Node:         node,
		Tool:         cleanText(in.Tool, limName),
		Tags:         cleanTags(in.Tags),
		ContainerIDs: cleanStrings(in.ContainerIDs, limID, limContainerIDs, func(s string, _ int) string { return cleanContainerID(s) }),
		CgroupID:     cleanText(in.CgroupID, limID),
		Steps:        cleanStrings(in.Steps, limStep, limSteps, cleanText),
	}
	if b.Tool == "" {
		return nil, errors.New("tool: missing")
	}
	if in.ImageID != "" {
		id, ok := normImageID(in.ImageID)
		if !ok {
			return nil, fmt.Errorf("imageID: %s is not an image ID (sha256:<64 lowercase hex>)", quoteShort(in.ImageID))
		}
		b.ImageID = id
	}
	var err error
	if in.Started == "" {
		return nil, errors.New("started: missing")
	}
	if b.Started, err = parseRFC3339("started", in.Started, now); err != nil {
		return nil, err
	}
	if in.Finished != "" {
		if b.Finished, err = parseRFC3339("finished", in.Finished, now); err != nil {
			return nil, err
		}
		if b.Finished.Before(b.Started) {
			return nil, errors.New("finished: before started")
		}
	}
	for i, p := range in.PIDs {
		if i == limPIDs {
			break
		}
		pid, err := checkItemPID("pids["+strconv.Itoa(i)+"]", int64(p))
		if err != nil {
			return nil, err
		}
		if pid > 0 {
			b.PIDs = append(b.PIDs, pid)
		}
	}
	b.EventID = cleanEventID(in.EventID)
	if b.EventID == "" {
		b.EventID = canonicalID("agent build\n"+node+"\n", raw)
	}
	return &b, nil
}

func agentConnectionItem(raw []byte, node string, now time.Time) (*evidence.Connection, error) {
	if k := jsonValueKind(raw); k != "object" {
		return nil, fmt.Errorf("want a JSON object, got %s", k)
	}
	var in Connection
	if err := decodeItem(raw, &in, true); err != nil {
		return nil, err
	}
	c := evidence.Connection{
		Source:      "agent",
		Node:        node,
		Process:     cleanText(in.Process, limName),
		Cmdline:     cleanText(in.Cmdline, limCmdline),
		ContainerID: cleanContainerID(in.ContainerID),
		CgroupID:    cleanText(in.CgroupID, limID),
		DestName:    cleanText(in.DestName, limName),
	}
	var err error
	if in.Time == "" {
		return nil, errors.New("time: missing")
	}
	if c.Time, err = parseRFC3339("time", in.Time, now); err != nil {
		return nil, err
	}
	if in.DestIP == "" {
		return nil, errors.New("destIP: missing")
	}
	if c.DestIP, err = parseDestIP("destIP", in.DestIP); err != nil {
		return nil, err
	}
	if in.DestPort == 0 {
		return nil, errors.New("destPort: missing")
	}
	if c.DestPort, err = checkDestPort("destPort", int64(in.DestPort)); err != nil {
		return nil, err
	}
	if c.PID, err = checkItemPID("pid", int64(in.PID)); err != nil {
		return nil, err
	}
	c.EventID = cleanEventID(in.EventID)
	if c.EventID == "" {
		c.EventID = canonicalID("agent connection\n"+node+"\n", raw)
	}
	return &c, nil
}
