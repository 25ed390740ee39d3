package audit

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ClaimAnnotation is the annotation of the claim Lease that names the
// last scan a replica claimed.
const ClaimAnnotation = "buildguard.dev/audit-scan"

// DefaultClaimLease is the name of the Lease replicas claim scans with.
const DefaultClaimLease = "buildguard-audit"

// Claim reports whether the caller, identity, runs the scan id: of
// replicas that call it for one scan ID, exactly one is told true. The
// claim is the annotation ClaimAnnotation of the Lease ns/name, written
// with an update that the API server refuses when another replica wrote
// first (optimistic concurrency on its resourceVersion).
//
// A replica that dies during its scan does not hand it on: the next
// interval's scan covers what it missed. That is cheaper than running
// every scan on every replica, which is what the periodic scan did
// without a claim.
func Claim(ctx context.Context, client kubernetes.Interface, ns, name, id, identity string, now time.Time) (bool, error) {
	leases := client.CoordinationV1().Leases(ns)
	for range 3 {
		l, err := leases.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			l = &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns,
				Labels: map[string]string{"app.kubernetes.io/name": "buildguard"}}}
			claim(l, id, identity, now)
			_, err = leases.Create(ctx, l, metav1.CreateOptions{})
			switch {
			case err == nil:
				return true, nil
			case apierrors.IsAlreadyExists(err):
				continue // another replica made it first: read what it claimed
			}
			return false, &ClaimError{Lease: ns + "/" + name, Err: err}
		}
		if err != nil {
			return false, &ClaimError{Lease: ns + "/" + name, Err: err}
		}
		if l.Annotations[ClaimAnnotation] == id {
			return false, nil
		}
		claim(l, id, identity, now)
		_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
		switch {
		case err == nil:
			return true, nil
		case apierrors.IsConflict(err):
			continue // written meanwhile: by a claim of this scan, or of an older one
		}
		return false, &ClaimError{Lease: ns + "/" + name, Err: err}
	}
	return false, &ClaimError{Lease: ns + "/" + name, Err: fmt.Errorf("still contended after 3 attempts")}
}

func claim(l *coordinationv1.Lease, id, identity string, now time.Time) {
	if l.Annotations == nil {
		l.Annotations = map[string]string{}
	}
	l.Annotations[ClaimAnnotation] = id
	t := metav1.NewMicroTime(now)
	l.Spec.HolderIdentity = &identity
	l.Spec.AcquireTime = &t
	l.Spec.RenewTime = &t
}

// ClaimError is a scan claim the API server did not settle.
type ClaimError struct {
	Lease string
	Err   error
}

func (e *ClaimError) Error() string {
	return fmt.Sprintf("audit: claim on Lease %s: %v", e.Lease, e.Err)
}

func (e *ClaimError) Unwrap() error { return e.Err }
