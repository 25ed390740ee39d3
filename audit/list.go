package audit

import (
	"context"
	"fmt"
	"slices"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"buildguard.dev/buildguard/engine"
)

// item is what a scan keeps of one listed object: only what judging it
// and deduplicating it need, so a scan of a large cluster does not hold
// every object's status and managed fields.
type item struct {
	kind, namespace, name string
	uid                   types.UID
	labels                map[string]string
	spec                  *corev1.PodSpec
	// owner is the UID of the controller that owns the object, if any.
	owner types.UID
	// active is false for an object that runs nothing now: a finished
	// Pod, a ReplicaSet scaled to zero, a Job with no active pods.
	active bool
	// sig is the signature of what it runs.
	sig string
}

// signature identifies what an object runs: every container's kind,
// name, image, pull policy and host path mounts, and the host paths.
// Two objects with the same signature and labels in one namespace get
// the same verdict.
func (it *item) signature() string { return it.sig }

func signatureOf(it *item) string {
	if it.spec == nil {
		return ""
	}
	var b strings.Builder
	for _, c := range engine.Containers(it.spec) {
		fmt.Fprintf(&b, "%s\x00%s\x00%s\x00%s", c.Kind, c.Name, c.Image, c.PullPolicy)
		for _, m := range c.Mounts {
			fmt.Fprintf(&b, "\x00%s\x00%s", m.Volume, m.SubPath)
		}
		b.WriteByte('\n')
	}
	for _, v := range it.spec.Volumes {
		if v.HostPath != nil {
			fmt.Fprintf(&b, "hostPath\x00%s\x00%s\n", v.Name, v.HostPath.Path)
		}
	}
	return b.String()
}

// images returns the distinct images of the object, in pod spec order.
func (it *item) images() []string {
	if it.spec == nil {
		return nil
	}
	var out []string
	for _, c := range engine.Containers(it.spec) {
		if !slices.Contains(out, c.Image) {
			out = append(out, c.Image)
		}
	}
	return out
}

// newItem keeps what a scan needs of an object's metadata and pod spec.
func newItem(kind string, m *metav1.ObjectMeta, spec *corev1.PodSpec, active bool) item {
	it := item{kind: kind, namespace: m.Namespace, name: m.Name, uid: m.UID, labels: m.Labels, spec: slim(spec), active: active}
	if ref := metav1.GetControllerOfNoCopy(m); ref != nil {
		it.owner = ref.UID
	}
	it.sig = signatureOf(&it)
	return it
}

// slim copies the parts of a pod spec the engine reads: containers'
// names, images, pull policies and mounts of host path volumes, host path
// volumes, pull secrets and the service account. Other mounts are left
// out: no rule reads them, and the API server adds one to every Pod (the
// service account token's) that its template does not have.
func slim(s *corev1.PodSpec) *corev1.PodSpec {
	if s == nil {
		return nil
	}
	hostPath := map[string]bool{}
	for _, v := range s.Volumes {
		if v.HostPath != nil {
			hostPath[v.Name] = true
		}
	}
	c := func(x corev1.Container) corev1.Container {
		out := corev1.Container{Name: x.Name, Image: x.Image, ImagePullPolicy: x.ImagePullPolicy}
		for _, m := range x.VolumeMounts {
			if hostPath[m.Name] {
				out.VolumeMounts = append(out.VolumeMounts, m)
			}
		}
		return out
	}
	out := &corev1.PodSpec{ImagePullSecrets: s.ImagePullSecrets, ServiceAccountName: s.ServiceAccountName}
	for _, x := range s.InitContainers {
		out.InitContainers = append(out.InitContainers, c(x))
	}
	for _, x := range s.Containers {
		out.Containers = append(out.Containers, c(x))
	}
	for _, x := range s.EphemeralContainers {
		out.EphemeralContainers = append(out.EphemeralContainers, corev1.EphemeralContainer{
			EphemeralContainerCommon: corev1.EphemeralContainerCommon(c(corev1.Container(x.EphemeralContainerCommon)))})
	}
	for _, v := range s.Volumes {
		if v.HostPath != nil {
			out.Volumes = append(out.Volumes, corev1.Volume{Name: v.Name, VolumeSource: corev1.VolumeSource{HostPath: v.HostPath}})
		}
	}
	return out
}

// lister lists one page of one kind.
type lister struct {
	kind string
	page func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (items []item, cont string, err error)
}

// listOf makes the lister of one kind from its typed List call and what
// a scan keeps of each of its objects; one helper, so that every kind is
// paged alike.
func listOf[L any, O any](kind string, list func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (*L, error),
	parts func(l *L) ([]O, string), keep func(x *O) item) lister {
	return lister{kind, func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) ([]item, string, error) {
		l, err := list(ctx, c, ns, o)
		if err != nil {
			return nil, "", err
		}
		objs, cont := parts(l)
		out := make([]item, 0, len(objs))
		for i := range objs {
			out = append(out, keep(&objs[i]))
		}
		return out, cont, nil
	}}
}

// listers returns the listers of every kind the webhook judges.
func listers() []lister {
	return []lister{
		listOf("CronJob", func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (*batchv1.CronJobList, error) {
			return c.BatchV1().CronJobs(ns).List(ctx, o)
		}, func(l *batchv1.CronJobList) ([]batchv1.CronJob, string) { return l.Items, l.Continue },
			func(x *batchv1.CronJob) item {
				return newItem("CronJob", &x.ObjectMeta, &x.Spec.JobTemplate.Spec.Template.Spec, true)
			}),
		listOf("Deployment", func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (*appsv1.DeploymentList, error) {
			return c.AppsV1().Deployments(ns).List(ctx, o)
		}, func(l *appsv1.DeploymentList) ([]appsv1.Deployment, string) { return l.Items, l.Continue },
			func(x *appsv1.Deployment) item {
				return newItem("Deployment", &x.ObjectMeta, &x.Spec.Template.Spec, true)
			}),
		listOf("StatefulSet", func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (*appsv1.StatefulSetList, error) {
			return c.AppsV1().StatefulSets(ns).List(ctx, o)
		}, func(l *appsv1.StatefulSetList) ([]appsv1.StatefulSet, string) { return l.Items, l.Continue },
			func(x *appsv1.StatefulSet) item {
				return newItem("StatefulSet", &x.ObjectMeta, &x.Spec.Template.Spec, true)
			}),
		listOf("DaemonSet", func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (*appsv1.DaemonSetList, error) {
			return c.AppsV1().DaemonSets(ns).List(ctx, o)
		}, func(l *appsv1.DaemonSetList) ([]appsv1.DaemonSet, string) { return l.Items, l.Continue },
			func(x *appsv1.DaemonSet) item {
				return newItem("DaemonSet", &x.ObjectMeta, &x.Spec.Template.Spec, true)
			}),
		listOf("ReplicaSet", func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (*appsv1.ReplicaSetList, error) {
			return c.AppsV1().ReplicaSets(ns).List(ctx, o)
		}, func(l *appsv1.ReplicaSetList) ([]appsv1.ReplicaSet, string) { return l.Items, l.Continue },
			func(x *appsv1.ReplicaSet) item {
				return newItem("ReplicaSet", &x.ObjectMeta, &x.Spec.Template.Spec, replicaSetActive(x))
			}),
		listOf("ReplicationController", func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (*corev1.ReplicationControllerList, error) {
			return c.CoreV1().ReplicationControllers(ns).List(ctx, o)
		}, func(l *corev1.ReplicationControllerList) ([]corev1.ReplicationController, string) {
			return l.Items, l.Continue
		},
			func(x *corev1.ReplicationController) item {
				var spec *corev1.PodSpec
				if x.Spec.Template != nil {
					spec = &x.Spec.Template.Spec
				}
				active := x.Status.Replicas > 0 || x.Spec.Replicas == nil || *x.Spec.Replicas > 0
				return newItem("ReplicationController", &x.ObjectMeta, spec, active)
			}),
		listOf("Job", func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (*batchv1.JobList, error) {
			return c.BatchV1().Jobs(ns).List(ctx, o)
		}, func(l *batchv1.JobList) ([]batchv1.Job, string) { return l.Items, l.Continue },
			func(x *batchv1.Job) item {
				return newItem("Job", &x.ObjectMeta, &x.Spec.Template.Spec, x.Status.Active > 0)
			}),
		listOf("Pod", func(ctx context.Context, c kubernetes.Interface, ns string, o metav1.ListOptions) (*corev1.PodList, error) {
			return c.CoreV1().Pods(ns).List(ctx, o)
		}, func(l *corev1.PodList) ([]corev1.Pod, string) { return l.Items, l.Continue },
			func(x *corev1.Pod) item {
				active := x.Status.Phase != corev1.PodSucceeded && x.Status.Phase != corev1.PodFailed
				return newItem("Pod", &x.ObjectMeta, &x.Spec, active)
			}),
	}
}

// replicaSetActive reports whether a ReplicaSet runs or is meant to run
// pods: a Deployment keeps its old ReplicaSets, scaled to zero, for
// rollbacks.
func replicaSetActive(x *appsv1.ReplicaSet) bool {
	return x.Status.Replicas > 0 || x.Spec.Replicas == nil || *x.Spec.Replicas > 0
}

// maxRelists bounds how often one kind's listing starts over after its
// continue token expired (the API server compacted the resource version
// it was listing at).
const maxRelists = 3

// ListError is a list call that failed: the scan stops, as judging a
// cluster without, say, its ReplicaSets would judge every Pod they own
// on its own.
type ListError struct {
	Kind      string
	Namespace string // "" for all namespaces
	Err       error
}

func (e *ListError) Error() string {
	where := "all namespaces"
	if e.Namespace != "" {
		where = "namespace " + e.Namespace
	}
	return fmt.Sprintf("listing %ss in %s: %v", e.Kind, where, e.Err)
}

func (e *ListError) Unwrap() error { return e.Err }

// listKind lists every object of one kind in ns ("" for all), page by
// page. onPage is told how many objects each page added (a negative
// number when the listing starts over).
func listKind(ctx context.Context, c kubernetes.Interface, l lister, ns string, pageSize int64, onPage func(int)) ([]item, error) {
	var all []item
	cont := ""
	for relists := 0; ; {
		items, next, err := l.page(ctx, c, ns, metav1.ListOptions{Limit: pageSize, Continue: cont})
		if err != nil {
			if cont != "" && apierrors.IsResourceExpired(err) && relists < maxRelists {
				// The snapshot being paged through is gone: start over
				// rather than mix two snapshots.
				relists++
				onPage(-len(all))
				all, cont = nil, ""
				continue
			}
			return nil, &ListError{Kind: l.kind, Namespace: ns, Err: err}
		}
		all = append(all, items...)
		onPage(len(items))
		if cont = next; cont == "" {
			return all, nil
		}
	}
}
