// Package nodereport reads the node-report formats POST /v1/node-reports
// takes — buildguard's own NodeReport, Falco alerts, Tetragon exports and
// Docker events (docs/node-reports.md) — into evidence.Reports, checking
// and bounding every item of untrusted input. The node agent writes
// NodeReports with the types this package reads them with; evidence
// keeps what was read.
package nodereport
