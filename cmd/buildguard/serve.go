package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"buildguard.dev/buildguard/engine"
	"buildguard.dev/buildguard/policy"
	"buildguard.dev/buildguard/registry"
	"buildguard.dev/buildguard/server"
	"buildguard.dev/buildguard/webhook"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var rf registryFlags
	rf.register(fs)
	listen := fs.String("listen", ":8443", "address to serve HTTPS on")
	certFile := fs.String("tls-cert-file", "", "PEM certificate (chain); reloaded when it changes (required)")
	keyFile := fs.String("tls-private-key-file", "", "PEM private key; reloaded when it changes (required)")
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig for namespace labels and pull secrets; in a cluster the pod's service account is used")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	reload := fs.Duration("policy-reload-interval", 5*time.Second, "how often the policy file is checked for changes")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{msg: fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	if rf.config == "" {
		return &usageError{msg: "--config is required"}
	}
	var handler slog.Handler
	switch *logFormat {
	case "json":
		handler = slog.NewJSONHandler(stderr, nil)
	case "text":
		handler = slog.NewTextHandler(stderr, nil)
	default:
		return &usageError{msg: fmt.Sprintf("--log-format %q: want json or text", *logFormat)}
	}
	log := slog.New(handler)

	// Validate everything before serving anything.
	if err := server.CheckFiles(*certFile, *keyFile); err != nil {
		return err
	}
	pf := &policyFile{path: rf.config, log: log}
	if err := pf.load(); err != nil {
		return err
	}
	kube, err := kubeClient(*kubeconfig)
	if err != nil {
		return err
	}

	metrics := webhook.NewMetrics()
	e := &engine.Engine{
		Policies:  engine.PolicyFunc(pf.current),
		Resolver:  rf.client(metrics),
		Keychains: registry.StaticKeychain{Auth: registry.DockerConfig},
		Now:       time.Now,
		Timeout:   rf.timeout,
		Log:       log,
	}
	ready := func() error { return nil }
	if kube != nil {
		factory := informers.NewSharedInformerFactory(kube, 10*time.Minute)
		nsInformer := factory.Core().V1().Namespaces()
		e.Namespaces = namespaceLabels{lister: nsInformer.Lister()}
		e.Keychains = &registry.KubernetesKeychains{Client: kube}
		synced := nsInformer.Informer().HasSynced
		factory.Start(ctx.Done())
		ready = func() error {
			if !synced() {
				return errors.New("namespace informer not synced")
			}
			return nil
		}
	}
	go pf.watch(ctx, *reload)

	mux := http.NewServeMux()
	mux.Handle("/validate", &webhook.Handler{Evaluator: e, Metrics: metrics, Log: log})
	mux.Handle("/metrics", metrics.Handler())
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	s := &server.Server{Listener: ln, CertFile: *certFile, KeyFile: *keyFile, Handler: mux, Ready: ready, Log: log}
	return s.Run(ctx)
}

// kubeClient returns a client from --kubeconfig, or the pod's service
// account inside a cluster, or nil outside one.
func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	switch {
	case kubeconfig != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
	default:
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	// Calls to the API server happen inside an admission review.
	cfg.Timeout = 3 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// namespaceLabels reads namespace labels from an informer's cache.
type namespaceLabels struct{ lister listersv1.NamespaceLister }

func (n namespaceLabels) Labels(_ context.Context, ns string) (map[string]string, error) {
	o, err := n.lister.Get(ns)
	if err != nil {
		return nil, err
	}
	return o.Labels, nil
}

// fixedLabels gives every namespace the same labels (check --mode).
type fixedLabels map[string]string

func (f fixedLabels) Labels(context.Context, string) (map[string]string, error) { return f, nil }

func podWithImage(img string) *corev1.PodSpec {
	return &corev1.PodSpec{Containers: []corev1.Container{{Name: "check", Image: img}}}
}

// policyFile holds the policy read from a file and reloads it when the
// file changes. A changed file that does not validate is logged and the
// previous policy stays in force: a policy is never half-applied.
type policyFile struct {
	path string
	log  *slog.Logger
	cur  atomic.Pointer[policy.Policy]
	raw  []byte
}

func (f *policyFile) current() *policy.Policy { return f.cur.Load() }

func (f *policyFile) load() error {
	raw, err := os.ReadFile(f.path)
	if err != nil {
		return fmt.Errorf("policy: %w", err)
	}
	if f.raw != nil && bytes.Equal(raw, f.raw) {
		return nil
	}
	p, err := policy.Parse(raw)
	if err != nil {
		return fmt.Errorf("policy %s: %w", f.path, err)
	}
	f.raw = raw
	f.cur.Store(p)
	f.log.Info("policy loaded", "path", f.path, "mode", string(p.Mode()))
	return nil
}

func (f *policyFile) watch(ctx context.Context, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := f.load(); err != nil {
				f.log.Error("policy not reloaded; the previous policy stays in force", "error", err)
			}
		}
	}
}
