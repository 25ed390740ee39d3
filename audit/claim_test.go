package audit

import (
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func TestClaim(t *testing.T) {
	client := fake.NewClientset()
	now := time.Date(2026, 12, 2, 6, 0, 0, 0, time.UTC)
	steps := []struct {
		id, who string
		want    bool
	}{
		{"scan-20261202T060000Z", "replica-a", true}, // creates the Lease
		{"scan-20261202T060000Z", "replica-b", false},
		{"scan-20261202T060000Z", "replica-a", false}, // a restarted replica does not scan twice
		{"scan-20261202T120000Z", "replica-b", true},
		{"scan-20261202T120000Z", "replica-a", false},
	}
	for _, s := range steps {
		got, err := Claim(t.Context(), client, "buildguard-system", DefaultClaimLease, s.id, s.who, now)
		if err != nil || got != s.want {
			t.Errorf("Claim(%s, %s) = %v, %v; want %v", s.id, s.who, got, err, s.want)
		}
	}
	l, err := client.CoordinationV1().Leases("buildguard-system").Get(t.Context(), DefaultClaimLease, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if l.Annotations[ClaimAnnotation] != "scan-20261202T120000Z" || *l.Spec.HolderIdentity != "replica-b" {
		t.Errorf("Lease = %v holder %s, want the second scan claimed by replica-b", l.Annotations, *l.Spec.HolderIdentity)
	}
}

func TestClaimError(t *testing.T) {
	client := fake.NewClientset()
	denied := errors.New(`leases.coordination.k8s.io is forbidden`)
	client.PrependReactor("get", "leases", func(k8stesting.Action) (bool, runtime.Object, error) { return true, nil, denied })
	ok, err := Claim(t.Context(), client, "buildguard-system", DefaultClaimLease, "scan-1", "a", time.Now())
	var ce *ClaimError
	if ok || !errors.As(err, &ce) || !errors.Is(err, denied) {
		t.Errorf("Claim = %v, %v; want false and a *ClaimError wrapping the API error", ok, err)
	}
}
