package nodeagent

import (
	"time"

	"buildguard.dev/buildguard/nodereport"
)

// Report is a NodeReport as POST /v1/node-reports takes it
// (docs/node-reports.md; nodereport.ParseAgent reads it).
type Report struct {
	APIVersion  string       `json:"apiVersion"`
	Kind        string       `json:"kind"`
	Node        string       `json:"node"`
	Sensor      string       `json:"sensor"`
	Builds      []Build      `json:"builds,omitempty"`
	Connections []Connection `json:"connections,omitempty"`
}

// Build is an image build in a NodeReport.
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
}

// newReport is an empty report of node and sensor.
func newReport(node, sensor string) Report {
	return Report{APIVersion: nodereport.AgentAPIVersion, Kind: nodereport.AgentKind, Node: node, Sensor: sensor}
}

// items is how many builds and connections r holds.
func (r Report) items() int { return len(r.Builds) + len(r.Connections) }

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }
