package webhook

import (
	"encoding/json"
	"fmt"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	meta     metav1.ObjectMeta
	template *metav1.ObjectMeta // the pod template's, for workloads
	spec     *corev1.PodSpec
	// specPath and metaPath are the JSON pointers of the pod spec and of
	// the metadata that describes the pods (the pod's, or its template's).
	specPath, metaPath string
	// metaMissing is set by the mutator when the request's JSON has no
	// object at metaPath.
	metaMissing bool
}

// annotations are the template's annotations overlaid with the object's.
func (o workloadObject) annotations() map[string]string {
	out := map[string]string{}
	if o.template != nil {
		for k, v := range o.template.Annotations {
			out[k] = v
		}
	}
	for k, v := range o.meta.Annotations {
		out[k] = v
	}
	return out
}

// controlled reports whether a controller owns the object.
func (o workloadObject) controlled() bool {
	for _, r := range o.meta.OwnerReferences {
		if r.Controller != nil && *r.Controller {
			return true
		}
	}
	return false
}

func gvkOf(req *admissionv1.AdmissionRequest) schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: req.Kind.Group, Version: req.Kind.Version, Kind: req.Kind.Kind}
}

// podSpecOf decodes the object of an admission request as its kind and
// returns the pod spec it carries (the pod's own, or its template's).
func podSpecOf(req *admissionv1.AdmissionRequest) (workloadObject, error) {
	gvk := gvkOf(req)
	if len(req.Object.Raw) == 0 {
		return workloadObject{}, &DecodeError{GVK: gvk, Err: fmt.Errorf("request.object is empty")}
	}
	return decodeWorkload(gvk, req.Object.Raw)
}

// decodeWorkload decodes raw as a workload of kind gvk.
func decodeWorkload(gvk schema.GroupVersionKind, raw []byte) (workloadObject, error) {
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
		return workloadObject{meta: o.ObjectMeta, spec: &o.Spec, specPath: "/spec", metaPath: "/metadata"}, nil
	case Kinds[1]:
		var o corev1.ReplicationController
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		if o.Spec.Template == nil {
			return workloadObject{meta: o.ObjectMeta}, nil
		}
		return workloadObject{meta: o.ObjectMeta, template: &o.Spec.Template.ObjectMeta, spec: &o.Spec.Template.Spec, specPath: "/spec/template/spec", metaPath: "/spec/template/metadata"}, nil
	case Kinds[2]:
		var o appsv1.Deployment
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{meta: o.ObjectMeta, template: &o.Spec.Template.ObjectMeta, spec: &o.Spec.Template.Spec, specPath: "/spec/template/spec", metaPath: "/spec/template/metadata"}, nil
	case Kinds[3]:
		var o appsv1.ReplicaSet
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{meta: o.ObjectMeta, template: &o.Spec.Template.ObjectMeta, spec: &o.Spec.Template.Spec, specPath: "/spec/template/spec", metaPath: "/spec/template/metadata"}, nil
	case Kinds[4]:
		var o appsv1.StatefulSet
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{meta: o.ObjectMeta, template: &o.Spec.Template.ObjectMeta, spec: &o.Spec.Template.Spec, specPath: "/spec/template/spec", metaPath: "/spec/template/metadata"}, nil
	case Kinds[5]:
		var o appsv1.DaemonSet
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{meta: o.ObjectMeta, template: &o.Spec.Template.ObjectMeta, spec: &o.Spec.Template.Spec, specPath: "/spec/template/spec", metaPath: "/spec/template/metadata"}, nil
	case Kinds[6]:
		var o batchv1.Job
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{meta: o.ObjectMeta, template: &o.Spec.Template.ObjectMeta, spec: &o.Spec.Template.Spec, specPath: "/spec/template/spec", metaPath: "/spec/template/metadata"}, nil
	case Kinds[7]:
		var o batchv1.CronJob
		if err := decode(&o); err != nil {
			return workloadObject{}, err
		}
		return workloadObject{meta: o.ObjectMeta, template: &o.Spec.JobTemplate.Spec.Template.ObjectMeta, spec: &o.Spec.JobTemplate.Spec.Template.Spec,
			specPath: "/spec/jobTemplate/spec/template/spec", metaPath: "/spec/jobTemplate/spec/template/metadata"}, nil
	}
	return workloadObject{}, &UnsupportedKindError{GVK: gvk}
}
