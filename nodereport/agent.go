package nodereport

import (
	"encoding/json"
	"time"
)

// AgentAPIVersion and AgentKind are the apiVersion and kind of a NodeReport,
// the JSON buildguard's node agent sends to POST /v1/node-reports.
const (
	AgentAPIVersion = "buildguard.dev/v1alpha1"
	AgentKind       = "NodeReport"
)

// Report is a NodeReport as the node agent writes it and ParseAgent reads
// it (docs/node-reports.md). Its types are declared once for both sides,
// so that neither can send or expect a field the other does not know.
type Report struct {
	APIVersion  string       `json:"apiVersion"`
	Kind        string       `json:"kind"`
	Node        string       `json:"node"`
	Sensor      string       `json:"sensor"`
	Builds      []Build      `json:"builds,omitempty"`
	Connections []Connection `json:"connections,omitempty"`
}

// rawReport is a Report whose items are kept raw, for ParseAgent to decode
// them one by one so that a bad item does not refuse the others. Its
// fields are Report's (TestRawReportIsReport checks): not an embedded
// header, which would name its fields "Header.node" in decoding errors.
type rawReport struct {
	APIVersion  string            `json:"apiVersion"`
	Kind        string            `json:"kind"`
	Node        string            `json:"node"`
	Sensor      string            `json:"sensor"`
	Builds      []json.RawMessage `json:"builds,omitempty"`
	Connections []json.RawMessage `json:"connections,omitempty"`
}

// NewReport is an empty NodeReport of node and sensor.
func NewReport(node, sensor string) Report {
	return Report{APIVersion: AgentAPIVersion, Kind: AgentKind, Node: node, Sensor: sensor}
}

// Items is how many builds and connections r holds.
func (r Report) Items() int { return len(r.Builds) + len(r.Connections) }

// Build is an image build in a NodeReport. Times are RFC 3339 (see Time).
type Build struct {
	EventID      string   `json:"eventID"`
	Tool         string   `json:"tool"`
	ImageID      string   `json:"imageID,omitempty"`
	Tags         []string `json:"tags,omitempty"`
	Started      string   `json:"started"`
	Finished     string   `json:"finished,omitempty"`
	PIDs         []int    `json:"pids,omitempty"`
	ContainerIDs []string `json:"containerIDs,omitempty"`
	CgroupID     string   `json:"cgroupID,omitempty"`
	Steps        []string `json:"steps,omitempty"`
}

// Connection is an outbound connection in a NodeReport.
type Connection struct {
	EventID     string `json:"eventID"`
	Time        string `json:"time"`
	Process     string `json:"process,omitempty"`
	PID         int    `json:"pid,omitempty"`
	Cmdline     string `json:"cmdline,omitempty"`
	ContainerID string `json:"containerID,omitempty"`
	CgroupID    string `json:"cgroupID,omitempty"`
	DestIP      string `json:"destIP"`
	DestPort    int    `json:"destPort"`
	DestName    string `json:"destName,omitempty"` // resolved name, when known
}

// Time is t as a NodeReport writes times: RFC 3339 in UTC, to the
// nanosecond.
func Time(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
