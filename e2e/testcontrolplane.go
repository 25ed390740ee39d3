package e2e

import (
	"context"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// StartTestControlPlane starts a control plane for t (StartControlPlane, within
// 3 minutes, in t's temporary directory), stopped when t ends, and
// returns it with its admin's REST config. With -short it skips t.
func StartTestControlPlane(t testing.TB) (*ControlPlane, *rest.Config) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cp, err := StartControlPlane(ctx, t.TempDir())
	if err != nil {
		t.Fatalf("control plane: %v", err)
	}
	t.Cleanup(cp.Stop)
	cfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return cp, cfg
}
