package cluster

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"buildguard.dev/buildguard/engine"
)

// Events posts Warning Events about workloads through client-go's event
// broadcaster, whose correlator folds repeats of the same event into a
// count and rate-limits each object's events: a crash-looping controller
// cannot make buildguard flood the API server.
type Events struct {
	recorder    record.EventRecorder
	broadcaster record.EventBroadcaster
}

// NewEvents returns Events posting as component "buildguard".
func NewEvents(client kubernetes.Interface) *Events {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &Events{broadcaster: b, recorder: b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "buildguard"})}
}

// apiVersions of the kinds buildguard judges.
var apiVersions = map[string]string{
	"Pod": "v1", "ReplicationController": "v1", "Deployment": "apps/v1", "ReplicaSet": "apps/v1",
	"StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "Job": "batch/v1", "CronJob": "batch/v1",
}

// Event implements records.EventSink and retro.EventSink: a Warning on
// the workload.
func (e *Events) Event(w engine.Workload, reason, message string) {
	ref := &corev1.ObjectReference{Kind: w.Kind, APIVersion: apiVersions[w.Kind], Namespace: w.Namespace, Name: w.Name}
	e.recorder.Event(ref, corev1.EventTypeWarning, reason, message)
}

// Shutdown stops the broadcaster. It does not flush: client-go cancels
// the writes still queued or being retried (in a test, 13 of 20 Events
// posted just before Shutdown never reached the API server). Events only
// announce what the decision records keep, so nothing recorded is lost.
func (e *Events) Shutdown() { e.broadcaster.Shutdown() }
