package review

import (
	"context"
	"fmt"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/policysource"
)

// Annotations a granted BuildPolicyException carries.
const (
	AnnotationGrantedBy = "buildguard.dev/granted-by"
	AnnotationGrantedAt = "buildguard.dev/granted-at"
	AnnotationDecision  = "buildguard.dev/decision"
)

// Granter makes a grant take effect. *ExceptionCreator and
// *policysource.ExceptionFile are Granters.
type Granter interface {
	// Grant stores g and returns the name of the exception it made.
	Grant(ctx context.Context, g policysource.Grant) (string, error)
}

// ExceptionCreator grants by creating a BuildPolicyException in the
// decision's namespace, which the CRD policy source (policysource.CRD)
// applies.
type ExceptionCreator struct {
	Client dynamic.Interface
}

// Grant implements Granter.
func (c *ExceptionCreator) Grant(ctx context.Context, g policysource.Grant) (string, error) {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": v1alpha1.APIVersion,
		"kind":       v1alpha1.KindBuildPolicyException,
		"metadata": map[string]any{
			"generateName": "review-",
			"namespace":    g.Namespace,
			"labels":       map[string]any{"app.kubernetes.io/managed-by": "buildguard-review"},
			"annotations": map[string]any{
				AnnotationGrantedBy: g.GrantedBy,
				AnnotationGrantedAt: g.At.UTC().Format(time.RFC3339),
				AnnotationDecision:  g.DecisionID,
			},
		},
		"spec": map[string]any{
			"images":     []any{g.Image},
			"reason":     g.Reason,
			"expires":    g.Expires.UTC().Format(time.RFC3339),
			"approvedBy": g.GrantedBy,
		},
	}}
	// The API server picks the name's random suffix without checking that
	// it is free: a collision is AlreadyExists, and another suffix is
	// tried.
	var err error
	for range createAttempts {
		var out *unstructured.Unstructured
		out, err = c.Client.Resource(v1alpha1.ExceptionResource()).Namespace(g.Namespace).Create(ctx, u, metav1.CreateOptions{})
		if err == nil {
			return g.Namespace + "/" + out.GetName(), nil
		}
		if !apierrors.IsAlreadyExists(err) {
			break
		}
	}
	return "", fmt.Errorf("creating BuildPolicyException in %s: %w", g.Namespace, err)
}

// createAttempts bounds the names tried for one exception.
const createAttempts = 5
