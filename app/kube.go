package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"buildguard.dev/buildguard/audit"
	"buildguard.dev/buildguard/cluster"
)

// podNamespaceFile holds the namespace of the pod the process runs in.
const podNamespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// kubeConfig returns the configuration of kubeconfig, or of the pod's
// service account inside a cluster, or nil outside one.
func kubeConfig(kubeconfig string, inCluster bool, version string) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case inCluster:
		cfg, err = rest.InClusterConfig()
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	cfg.UserAgent = "buildguard/" + version
	return cfg, nil
}

// resolve returns the reference's namespace, the pod's own when it names
// none, and its name.
func (r objectRef) resolve() (ns, name string, err error) {
	if r.namespace != "" {
		return r.namespace, r.name, nil
	}
	b, err := os.ReadFile(podNamespaceFile)
	if err != nil {
		return "", "", optionErrorf("%s %q: give namespace/name outside a pod (%v)", r.flag, r.name, err)
	}
	return strings.TrimSpace(string(b)), r.name, nil
}

// newStatusLease resolves --status-lease: nil when it is empty, or when
// it names no namespace outside a pod (a process of its own, which has
// no other replica to agree with).
func newStatusLease(ref objectRef, kube kubernetes.Interface, log *slog.Logger) (*cluster.StatusLease, error) {
	if ref.name == "" {
		return nil, nil
	}
	if ref.namespace == "" {
		if _, err := os.Stat(podNamespaceFile); err != nil {
			log.Info("policy status is written without a lease: not in a pod (give --status-lease=namespace/name to elect one writer among replicas)")
			return nil, nil
		}
	}
	ns, name, err := ref.resolve()
	if err != nil {
		return nil, err
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("--status-lease: naming this replica: %w", err)
	}
	var suffix [6]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return nil, err
	}
	// The pod's name, and a suffix: a restarted container is a new
	// candidate, not the holder of its predecessor's lease.
	return &cluster.StatusLease{Client: kube, Namespace: ns, Name: name, Identity: host + "_" + hex.EncodeToString(suffix[:]), Log: log}, nil
}

// newClaimer resolves --audit-lease into a claim of scans in that Lease
// by this process, named by its host name (in a pod, the pod's name) and
// its process ID.
func newClaimer(lease objectRef, kube kubernetes.Interface) (func(context.Context, string) (bool, error), error) {
	ns, name, err := lease.resolve()
	if err != nil {
		return nil, err
	}
	host, err := os.Hostname()
	if err != nil {
		return nil, fmt.Errorf("--audit-lease: naming this replica: %w", err)
	}
	owner := fmt.Sprintf("%s-%d", host, os.Getpid())
	return func(ctx context.Context, id string) (bool, error) {
		return audit.Claim(ctx, kube, ns, name, id, owner, time.Now())
	}, nil
}

// namespaceLabels reads namespace labels from an informer's cache, and
// from the API server for a namespace the cache has not seen yet (one
// created a moment ago).
type namespaceLabels struct {
	lister listersv1.NamespaceLister
	client kubernetes.Interface
}

func (n namespaceLabels) Labels(ctx context.Context, ns string) (map[string]string, error) {
	o, err := n.lister.Get(ns)
	if apierrors.IsNotFound(err) {
		o, err = n.client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	}
	if err != nil {
		return nil, err
	}
	return o.Labels, nil
}
