package webhook

import (
	"encoding/json"
	"fmt"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Kinds lists the workload kinds buildguard judges, as group/version/kind.
var Kinds = []schema.GroupVersionKind{
	{Version: "v1", Kind: "Pod"},
	{Version: "v1", Kind: "ReplicationController"},
	{Group: "apps", Version: "v1", Kind: "Deployment"},
	{Group: "apps", Version: "v1", Kind: "ReplicaSet"},
	{Group: "apps", Version: "v1", Kind: "StatefulSet"},
	{Group: "apps", Version: "v1", Kind: "DaemonSet"},
	{Group: "batch", Version: "v1", Kind: "Job"},
	{Group: "batch", Version: "v1", Kind: "CronJob"},
}

// UnsupportedKindError is a request for a kind buildguard does not judge:
// the webhook configuration sends more than it should.
type UnsupportedKindError struct{ GVK schema.GroupVersionKind }

func (e *UnsupportedKindError) Error() string {
	names := make([]string, len(Kinds))
	for i, k := range Kinds {
		names[i] = k.Kind
	}
	return fmt.Sprintf("buildguard does not handle %s; it handles %s (check the webhook configuration's rules)",
		gvkString(e.GVK), strings.Join(names, ", "))
}

func gvkString(k schema.GroupVersionKind) string {
	if k.Group == "" {
		return k.Version + " " + k.Kind
	}
	return k.Group + "/" + k.Version + " " + k.Kind
}

// DecodeError is an object that does not decode as its kind.
type DecodeError struct {
	GVK schema.GroupVersionKind
	Err error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("request object is not a valid %s: %v", gvkString(e.GVK), e.Err)
}

// workloadObject is the part of any workload object buildguard reads.
type workloadObject struct {
	name   string
	labels map[string]string
	spec   *corev1.PodSpec
}

// podSpecOf decodes the object of an admission request as its kind and
// returns the pod spec it carries (the pod's own, or its template's).
func podSpecOf(req *admissionv1.AdmissionRequest) (workloadObject, error) {
	gvk := schema.GroupVersionKind{Group: req.Kind.Group, Version: req.Kind.Version, Kind: req.Kind.Kind}
	raw := req.Object.Raw
	if len(raw) == 0 {
		return workloadObject{}, &DecodeError{GVK: gvk, Err: fmt.Errorf("request.object is empty")}
	}
	decode := func(v any) error {
		if err := json.Unmarshal(raw, v); err != nil {
			return &DecodeError{GVK: gvk, Err: err}
		}
		return nil
	}
	switch gvk {
	case Kinds[0]:
		var o corev1.Pod
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{o.Name, o.Labels, &o.Spec}, nil
	case Kinds[1]:
		var o corev1.ReplicationController
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		if o.Spec.Template == nil {
			return workloadObject{o.Name, o.Labels, nil}, nil
		}
		return workloadObject{o.Name, o.Labels, &o.Spec.Template.Spec}, nil
	case Kinds[2]:
		var o appsv1.Deployment
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{o.Name, o.Labels, &o.Spec.Template.Spec}, nil
	case Kinds[3]:
		var o appsv1.ReplicaSet
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{o.Name, o.Labels, &o.Spec.Template.Spec}, nil
	case Kinds[4]:
		var o appsv1.StatefulSet
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{o.Name, o.Labels, &o.Spec.Template.Spec}, nil
	case Kinds[5]:
		var o appsv1.DaemonSet
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{o.Name, o.Labels, &o.Spec.Template.Spec}, nil
	case Kinds[6]:
		var o batchv1.Job
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{o.Name, o.Labels, &o.Spec.Template.Spec}, nil
	case Kinds[7]:
		var o batchv1.CronJob
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{o.Name, o.Labels, &o.Spec.JobTemplate.Spec.Template.Spec}, nil
	}
	return workloadObject{}, &UnsupportedKindError{GVK: gvk}
}
