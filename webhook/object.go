package webhook

import (
	"encoding/json"
	"fmt"
	"strings"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"buildguard.dev/buildguard/engine"
)

// The workload kinds buildguard judges, as group/version/kind.
var (
	kindPod                   = schema.GroupVersionKind{Version: "v1", Kind: "Pod"}
	kindReplicationController = schema.GroupVersionKind{Version: "v1", Kind: "ReplicationController"}
	kindDeployment            = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}
	kindReplicaSet            = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "ReplicaSet"}
	kindStatefulSet           = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "StatefulSet"}
	kindDaemonSet             = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "DaemonSet"}
	kindJob                   = schema.GroupVersionKind{Group: "batch", Version: "v1", Kind: "Job"}
	kindCronJob               = schema.GroupVersionKind{Group: "batch", Version: "v1", Kind: "CronJob"}
)

// Kinds lists the workload kinds buildguard judges; the slice is the
// caller's.
func Kinds() []schema.GroupVersionKind {
	return []schema.GroupVersionKind{kindPod, kindReplicationController, kindDeployment, kindReplicaSet,
		kindStatefulSet, kindDaemonSet, kindJob, kindCronJob}
}

// UnsupportedKindError is a request for a kind buildguard does not judge:
// the webhook configuration sends more than it should.
type UnsupportedKindError struct{ GVK schema.GroupVersionKind }

func (e *UnsupportedKindError) Error() string {
	ks := Kinds()
	names := make([]string, len(ks))
	for i, k := range ks {
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

// controllerUser reports whether user is one of the control plane's
// controllers. An ownerReference is written by whoever creates the
// object; only a controller's word that it owns one is believed, or a
// user could skip change control with a made-up owner.
func controllerUser(user string) bool {
	return user == "system:kube-controller-manager" ||
		strings.HasPrefix(user, "system:serviceaccount:kube-system:")
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
func podSpecOf(d decoded) (workloadObject, error) {
	gvk := gvkOf(d.req)
	if d.once && d.obj == nil || !d.once && len(d.req.Object.Raw) == 0 {
		return workloadObject{}, &DecodeError{GVK: gvk, Err: fmt.Errorf("request.object is empty")}
	}
	if d.once {
		return workloadFrom(gvk, d.obj)
	}
	return decodeWorkload(gvk, d.req.Object.Raw)
}

// DecodeWorkload decodes raw, the JSON of an object of kind gvk, as the
// webhook decodes the object of an admission request. It returns the
// workload it runs — Kind, Name, Labels, Spec and Annotations; the
// namespace is the caller's to say — and the JSON pointer of its pod spec
// ("/spec/template/spec" for a Deployment). A kind buildguard does not
// judge gives an *UnsupportedKindError, an object that does not decode a
// *DecodeError.
func DecodeWorkload(gvk schema.GroupVersionKind, raw []byte) (engine.Workload, string, error) {
	o, err := decodeWorkload(gvk, raw)
	if err != nil {
		return engine.Workload{}, "", err
	}
	return engine.Workload{Kind: gvk.Kind, Name: o.meta.Name, Labels: o.meta.Labels, Spec: o.spec, Annotations: o.annotations()}, o.specPath, nil
}

// decodeWorkload decodes raw as a workload of kind gvk. It reads only
// the fields buildguard uses: decoding a whole Deployment with the typed
// API structs cost more than everything else a cached review does.
func decodeWorkload(gvk schema.GroupVersionKind, raw []byte) (workloadObject, error) {
	if tooManyElements(raw) {
		return workloadObject{}, &DecodeError{GVK: gvk, Err: fmt.Errorf("it holds more than %d list elements; buildguard judges no more", MaxListElements)}
	}
	var o wireObject
	if err := json.Unmarshal(raw, &o); err != nil {
		return workloadObject{}, &DecodeError{GVK: gvk, Err: err}
	}
	return workloadFrom(gvk, &o)
}

// workloadFrom returns the workload of kind gvk that o holds.
func workloadFrom(gvk schema.GroupVersionKind, o *wireObject) (workloadObject, error) {
	switch gvk {
	case kindPod:
		return workloadObject{meta: o.Metadata.meta(), spec: o.Spec.wirePodSpec.podSpec(), specPath: "/spec", metaPath: "/metadata"}, nil
	case kindReplicationController, kindDeployment, kindReplicaSet, kindStatefulSet, kindDaemonSet, kindJob: // template at spec.template
		w := workloadObject{meta: o.Metadata.meta(), specPath: "/spec/template/spec", metaPath: "/spec/template/metadata"}
		if t := o.Spec.Template; t != nil {
			m := t.Metadata.meta()
			w.template, w.spec = &m, t.Spec.podSpec()
		} else if gvk != kindReplicationController {
			w.spec = (&wirePodSpec{}).podSpec() // the API server defaults a template; an empty one judges nothing
			m := metav1.ObjectMeta{}
			w.template = &m
		}
		return w, nil
	case kindCronJob:
		w := workloadObject{meta: o.Metadata.meta(), specPath: "/spec/jobTemplate/spec/template/spec", metaPath: "/spec/jobTemplate/spec/template/metadata"}
		m := metav1.ObjectMeta{}
		w.template, w.spec = &m, (&wirePodSpec{}).podSpec()
		if jt := o.Spec.JobTemplate; jt != nil && jt.Spec.Template != nil {
			m = jt.Spec.Template.Metadata.meta()
			w.spec = jt.Spec.Template.Spec.podSpec()
		}
		return w, nil
	}
	return workloadObject{}, &UnsupportedKindError{GVK: gvk}
}

// The wire types mirror the JSON of the Kubernetes objects, keeping only
// what buildguard reads; encoding/json skips the rest without building it.
type wireObject struct {
	Metadata wireMeta `json:"metadata"`
	Spec     struct {
		wirePodSpec
		Template    *wireTemplate    `json:"template"`
		JobTemplate *wireJobTemplate `json:"jobTemplate"`
	} `json:"spec"`
}

type wireJobTemplate struct {
	Spec struct {
		Template *wireTemplate `json:"template"`
	} `json:"spec"`
}

type wireTemplate struct {
	Metadata wireMeta    `json:"metadata"`
	Spec     wirePodSpec `json:"spec"`
}

type wireMeta struct {
	Name            string                  `json:"name"`
	Labels          map[string]string       `json:"labels"`
	Annotations     map[string]string       `json:"annotations"`
	OwnerReferences []metav1.OwnerReference `json:"ownerReferences"`
}

func (m wireMeta) meta() metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: m.Name, Labels: m.Labels, Annotations: m.Annotations, OwnerReferences: m.OwnerReferences}
}

type wireContainer struct {
	Name            string               `json:"name"`
	Image           string               `json:"image"`
	ImagePullPolicy corev1.PullPolicy    `json:"imagePullPolicy"`
	VolumeMounts    []corev1.VolumeMount `json:"volumeMounts"`
}

type wireVolume struct {
	Name     string                       `json:"name"`
	HostPath *corev1.HostPathVolumeSource `json:"hostPath"`
}

type wirePodSpec struct {
	InitContainers      []wireContainer               `json:"initContainers"`
	Containers          []wireContainer               `json:"containers"`
	EphemeralContainers []wireContainer               `json:"ephemeralContainers"`
	Volumes             []wireVolume                  `json:"volumes"`
	ImagePullSecrets    []corev1.LocalObjectReference `json:"imagePullSecrets"`
	ServiceAccountName  string                        `json:"serviceAccountName"`
}

func (w *wirePodSpec) podSpec() *corev1.PodSpec {
	c := func(x wireContainer) corev1.Container {
		return corev1.Container{Name: x.Name, Image: x.Image, ImagePullPolicy: x.ImagePullPolicy, VolumeMounts: x.VolumeMounts}
	}
	s := &corev1.PodSpec{ImagePullSecrets: w.ImagePullSecrets, ServiceAccountName: w.ServiceAccountName}
	// corev1.Container is large: size the lists once.
	if len(w.InitContainers) > 0 {
		s.InitContainers = make([]corev1.Container, 0, len(w.InitContainers))
	}
	if len(w.Containers) > 0 {
		s.Containers = make([]corev1.Container, 0, len(w.Containers))
	}
	if len(w.EphemeralContainers) > 0 {
		s.EphemeralContainers = make([]corev1.EphemeralContainer, 0, len(w.EphemeralContainers))
	}
	if len(w.Volumes) > 0 {
		s.Volumes = make([]corev1.Volume, 0, len(w.Volumes))
	}
	for _, x := range w.InitContainers {
		s.InitContainers = append(s.InitContainers, c(x))
	}
	for _, x := range w.Containers {
		s.Containers = append(s.Containers, c(x))
	}
	for _, x := range w.EphemeralContainers {
		s.EphemeralContainers = append(s.EphemeralContainers, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon(c(x))})
	}
	for _, v := range w.Volumes {
		vol := corev1.Volume{Name: v.Name}
		vol.HostPath = v.HostPath
		s.Volumes = append(s.Volumes, vol)
	}
	return s
}
