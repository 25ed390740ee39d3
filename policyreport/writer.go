package policyreport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
)

// DefaultTimeout bounds one request to the API server.
const DefaultTimeout = 10 * time.Second

// Writer writes the reports of audit scans. Client and Discovery are
// required.
type Writer struct {
	// Client reads and writes the reports.
	Client dynamic.Interface
	// Discovery tells whether the API server serves the reports' CRDs:
	// a *discovery.DiscoveryClient.
	Discovery Discovery
	// API is the report API. The default is OpenReports.
	API API
	// MaxResults bounds the results of one report. The default is
	// DefaultMaxResults.
	MaxResults int
	// Clock tells the time of the results' timestamps. The default, nil,
	// is the real clock.
	Clock clock.Clock
	// Log receives what was written, and once whether the CRDs are
	// served. The default discards.
	Log *slog.Logger

	mu     sync.Mutex
	served *bool // what was last said of the CRDs
}

// Discovery lists the resources the API server serves in a group
// version; discovery.DiscoveryClient is one.
type Discovery interface {
	ServerResourcesForGroupVersionWithContext(ctx context.Context, groupVersion string) (*metav1.APIResourceList, error)
}

// NewWriter returns a Writer of api to the API server of cfg, or nil for
// "none" or "": no reports.
func NewWriter(api string, cfg *rest.Config, log *slog.Logger) (*Writer, error) {
	if api == "" || api == "none" {
		return nil, nil
	}
	a, err := ParseAPI(api)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &Writer{Client: dyn, Discovery: disc, API: a, Log: log}, nil
}

// ErrNotServed is returned by Write when the API server does not serve
// the report API's CRDs.
var ErrNotServed = errors.New("policy report CRDs not served")

// Stats says what a Write did.
type Stats struct {
	Created, Updated, Deleted, Results, Omitted int
}

func (w *Writer) api() API {
	if w.API == "" {
		return OpenReports
	}
	return w.API
}

func (w *Writer) log() *slog.Logger {
	return logger.OrDiscard(w.Log)
}

// Served reports whether the API server serves both report resources of
// the API. The first answer, and every change of it, is logged.
func (w *Writer) Served(ctx context.Context) (bool, error) {
	nsRes, clRes := w.api().Resources()
	cctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	list, err := w.Discovery.ServerResourcesForGroupVersionWithContext(cctx, nsRes.GroupVersion().String())
	cancel()
	served := false
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return false, fmt.Errorf("discovering %s: %w", nsRes.GroupVersion(), err)
	default:
		var names []string
		for _, r := range list.APIResources {
			names = append(names, r.Name)
		}
		served = slices.Contains(names, nsRes.Resource) && slices.Contains(names, clRes.Resource)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.served == nil || *w.served != served {
		if served {
			w.log().Info("policy reports: the API server serves "+nsRes.GroupVersion().String()+"; audit scans write reports there", "api", string(w.api()))
		} else {
			w.log().Warn("policy reports: the API server does not serve "+nsRes.GroupVersion().String()+" "+nsRes.Resource+" and "+clRes.Resource+
				"; no reports are written until its CRDs are installed (buildguard does not install them)", "api", string(w.api()))
		}
		w.served = &served
	}
	return served, nil
}

// Write replaces buildguard's reports with those of the scan r: one per
// namespace scanned with workloads in it, and one cluster-scoped report
// when some namespace's mode label is invalid. Reports of namespaces the
// scan covered that now have nothing are deleted; a scan limited to some
// namespaces (r.Namespaces) leaves the others' alone. It returns
// ErrNotServed, and writes nothing, when the CRDs are not served.
func (w *Writer) Write(ctx context.Context, r *audit.Report) (Stats, error) {
	var st Stats
	if ok, err := w.Served(ctx); err != nil || !ok {
		if err == nil {
			err = ErrNotServed
		}
		return st, err
	}
	max := w.MaxResults
	if max <= 0 {
		max = DefaultMaxResults
	}
	t := clock.OrReal(w.Clock).Now()
	reports := build(r, max)
	nsRes, clRes := w.api().Resources()
	sel := metav1.ListOptions{LabelSelector: ManagedByLabel + "=" + Source}

	// Namespaced reports: write the new, delete the stale.
	existing := map[string]bool{}
	list, err := w.list(ctx, nsRes, sel)
	if err != nil {
		return st, err
	}
	for _, o := range list {
		if o.GetName() == Name {
			existing[o.GetNamespace()] = true
		}
	}
	var errs []error
	for ns, rep := range reports {
		if ns == "" {
			continue
		}
		created, err := w.put(ctx, nsRes, rep.object(w.api(), r.ID, t, max))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		count(&st, created, rep)
	}
	for ns := range existing {
		if _, ok := reports[ns]; ok || !covered(r, ns) {
			continue
		}
		if gone, err := w.delete(ctx, nsRes, ns); err != nil {
			errs = append(errs, err)
		} else if gone {
			st.Deleted++
		}
	}
	// The cluster-scoped report: only a scan of every namespace says
	// what it holds.
	if len(r.Namespaces) == 0 {
		if rep, ok := reports[""]; ok {
			created, err := w.put(ctx, clRes, rep.object(w.api(), r.ID, t, max))
			if err != nil {
				errs = append(errs, err)
			} else {
				count(&st, created, rep)
			}
		} else if gone, err := w.delete(ctx, clRes, ""); err != nil {
			errs = append(errs, err)
		} else if gone {
			st.Deleted++
		}
	}
	w.log().Info("policy reports written", "scan", r.ID, "api", string(w.api()), "created", st.Created, "updated", st.Updated,
		"deleted", st.Deleted, "results", st.Results, "omitted", st.Omitted, "errors", len(errs))
	return st, errors.Join(errs...)
}

// Written writes the reports of the complete scan r, as Write does, and
// logs what went wrong; it has the signature of audit.Schedule's
// Completed. Nothing is logged when the CRDs are not served: Served has
// said so.
func (w *Writer) Written(ctx context.Context, r *audit.Report) {
	if _, err := w.Write(ctx, r); err != nil && !errors.Is(err, ErrNotServed) {
		w.log().Error("policy reports not written", "scan", r.ID, "api", string(w.api()), "error", err)
	}
}

func count(st *Stats, created bool, rep *report) {
	if created {
		st.Created++
	} else {
		st.Updated++
	}
	st.Results += len(rep.results)
	st.Omitted += rep.omitted
}

// covered reports whether the scan r judged namespace ns's workloads.
func covered(r *audit.Report, ns string) bool {
	return len(r.Namespaces) == 0 || slices.Contains(r.Namespaces, ns)
}

func (w *Writer) resource(gvr schema.GroupVersionResource, ns string) dynamic.ResourceInterface {
	if ns == "" {
		return w.Client.Resource(gvr)
	}
	return w.Client.Resource(gvr).Namespace(ns)
}

func (w *Writer) list(ctx context.Context, gvr schema.GroupVersionResource, o metav1.ListOptions) ([]unstructured.Unstructured, error) {
	var out []unstructured.Unstructured
	o.Limit = 500
	for {
		cctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
		l, err := w.Client.Resource(gvr).List(cctx, o)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("listing %s: %w", gvr.Resource, err)
		}
		out = append(out, l.Items...)
		if o.Continue = l.GetContinue(); o.Continue == "" {
			return out, nil
		}
	}
}

// put creates obj, or replaces the one there; it reports whether it
// created it. A conflict (another writer in between) is retried once.
func (w *Writer) put(ctx context.Context, gvr schema.GroupVersionResource, obj *unstructured.Unstructured) (bool, error) {
	ri := w.resource(gvr, obj.GetNamespace())
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
		cur, err := ri.Get(cctx, obj.GetName(), metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = ri.Create(cctx, obj, metav1.CreateOptions{FieldManager: Source})
			cancel()
			if apierrors.IsAlreadyExists(err) && attempt == 0 {
				continue
			}
			if err != nil {
				return false, fmt.Errorf("creating %s %s: %w", obj.GetKind(), key(obj), err)
			}
			return true, nil
		case err != nil:
			cancel()
			return false, fmt.Errorf("reading %s %s: %w", obj.GetKind(), key(obj), err)
		}
		obj.SetResourceVersion(cur.GetResourceVersion())
		_, err = ri.Update(cctx, obj, metav1.UpdateOptions{FieldManager: Source})
		cancel()
		if apierrors.IsConflict(err) && attempt == 0 {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("updating %s %s: %w", obj.GetKind(), key(obj), err)
		}
		return false, nil
	}
}

// delete deletes buildguard's report of namespace ns (the
// cluster-scoped one for ""), and reports whether there was one.
func (w *Writer) delete(ctx context.Context, gvr schema.GroupVersionResource, ns string) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, DefaultTimeout)
	defer cancel()
	err := w.resource(gvr, ns).Delete(cctx, Name, metav1.DeleteOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("deleting the %s report %q: %w", gvr.Resource, ns, err)
	}
	return true, nil
}

func key(o *unstructured.Unstructured) string {
	if o.GetNamespace() == "" {
		return o.GetName()
	}
	return o.GetNamespace() + "/" + o.GetName()
}
