package cluster

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"buildguard.dev/buildguard/internal/clock/clocktest"
	"buildguard.dev/buildguard/internal/selfsigned"
	"buildguard.dev/buildguard/internal/syncbuffer"
)

func newCA(t *testing.T) []byte {
	t.Helper()
	f, err := selfsigned.Write(t.TempDir(), "buildguard.buildguard-system.svc")
	if err != nil {
		t.Fatal(err)
	}
	return f.CAPEM
}

func webhookObjects() (*admissionregistrationv1.ValidatingWebhookConfiguration, *admissionregistrationv1.MutatingWebhookConfiguration) {
	return &admissionregistrationv1.ValidatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "buildguard"},
			Webhooks:   []admissionregistrationv1.ValidatingWebhook{{Name: "validate.buildguard.dev"}},
		}, &admissionregistrationv1.MutatingWebhookConfiguration{
			ObjectMeta: metav1.ObjectMeta{Name: "buildguard"},
			Webhooks:   []admissionregistrationv1.MutatingWebhook{{Name: "mutate.buildguard.dev"}},
		}
}

// published returns the CA in the two webhook configurations and the
// ConfigMap.
func published(t *testing.T, cs *fake.Clientset) (vwc, mwc, cm string) {
	t.Helper()
	ctx := t.Context()
	v, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, "buildguard", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "buildguard", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cs.CoreV1().ConfigMaps("buildguard-node-agent").Get(ctx, "buildguard-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return string(v.Webhooks[0].ClientConfig.CABundle), string(m.Webhooks[0].ClientConfig.CABundle), c.Data[CAKey]
}

// TestCABundleFromSecret follows a first start: the CA Secret does not
// exist yet (logged once, at info), then appears, then is rotated; the
// webhook configurations and the node agents' ConfigMap follow it, and
// other keys of the ConfigMap are left alone.
func TestCABundleFromSecret(t *testing.T) {
	vwc, mwc := webhookObjects()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "buildguard-ca", Namespace: "buildguard-node-agent"},
		Data: map[string]string{"other": "kept"}}
	cs := fake.NewClientset(vwc, mwc, cm)
	var logs bytes.Buffer
	b := &CABundle{
		Client: cs, CA: SecretCA{Client: cs, Namespace: "buildguard-system", Name: "buildguard-ca"},
		Webhook: "buildguard", ConfigMapNamespace: "buildguard-node-agent", ConfigMapName: "buildguard-ca",
		Log: slog.New(slog.NewJSONHandler(&logs, nil)),
	}
	ctx := t.Context()
	for range 3 {
		err := b.Sync(ctx)
		var nr *CANotReadyError
		if !errors.As(err, &nr) {
			t.Fatalf("Sync without the Secret = %v, want a *CANotReadyError", err)
		}
	}
	if n := strings.Count(logs.String(), "\n"); n != 1 || !strings.Contains(logs.String(), `"level":"INFO"`) {
		t.Errorf("a missing CA three times logged %d lines, want one at INFO:\n%s", n, logs.String())
	}

	ca1 := newCA(t)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "buildguard-ca", Namespace: "buildguard-system"},
		Data: map[string][]byte{CAKey: ca1}}
	if _, err := cs.CoreV1().Secrets("buildguard-system").Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if v, m, c := published(t, cs); v != string(ca1) || m != string(ca1) || c != string(ca1) {
		t.Fatalf("after the CA was created: validating %q, mutating %q, configmap %q; want the CA in all three", v, m, c)
	}
	// Nothing to do: no write.
	cs.ClearActions()
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range cs.Actions() {
		if a.GetVerb() != "get" {
			t.Errorf("Sync with everything current: %s %s, want only gets", a.GetVerb(), a.GetResource().Resource)
		}
	}

	ca2 := newCA(t)
	sec.Data[CAKey] = ca2
	if _, err := cs.CoreV1().Secrets("buildguard-system").Update(ctx, sec, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if v, m, c := published(t, cs); v != string(ca2) || m != string(ca2) || c != string(ca2) {
		t.Fatalf("after rotation: validating %q, mutating %q, configmap %q; want the new CA in all three", v, m, c)
	}
	got, _ := cs.CoreV1().ConfigMaps("buildguard-node-agent").Get(ctx, "buildguard-ca", metav1.GetOptions{})
	if got.Data["other"] != "kept" {
		t.Errorf("ConfigMap data = %v, want the key other kept", got.Data)
	}
}

// TestCABundleFromFile publishes cert-manager's ca.crt into the ConfigMap
// only, and refuses a file that is not a certificate.
func TestCABundleFromFile(t *testing.T) {
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "buildguard-ca", Namespace: "buildguard-node-agent"}}
	cs := fake.NewClientset(cm)
	file := filepath.Join(t.TempDir(), "ca.crt")
	b := &CABundle{Client: cs, CA: FileCA(file), ConfigMapNamespace: "buildguard-node-agent", ConfigMapName: "buildguard-ca"}
	ctx := t.Context()
	var nr *CANotReadyError
	if err := b.Sync(ctx); !errors.As(err, &nr) {
		t.Fatalf("Sync without the file = %v, want a *CANotReadyError", err)
	}
	for _, bad := range []string{"", "not pem", "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"} {
		if err := os.WriteFile(file, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := b.Sync(ctx); err == nil || !strings.Contains(err.Error(), "CA:") {
			t.Errorf("Sync of %q = %v, want a CA error", bad, err)
		}
	}
	ca := newCA(t)
	if err := os.WriteFile(file, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	got, _ := cs.CoreV1().ConfigMaps("buildguard-node-agent").Get(ctx, "buildguard-ca", metav1.GetOptions{})
	if got.Data[CAKey] != string(ca) {
		t.Errorf("ConfigMap ca.crt = %q, want the file's CA", got.Data[CAKey])
	}
}

// TestCABundleMissingConfigMap is a warning naming what to apply, logged
// once however long it lasts; the webhooks are still kept.
func TestCABundleMissingConfigMap(t *testing.T) {
	vwc, mwc := webhookObjects()
	ca := newCA(t)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "buildguard-ca", Namespace: "buildguard-system"}, Data: map[string][]byte{CAKey: ca}}
	cs := fake.NewClientset(vwc, mwc, sec)
	var logs bytes.Buffer
	b := &CABundle{Client: cs, CA: SecretCA{Client: cs, Namespace: "buildguard-system", Name: "buildguard-ca"},
		Webhook: "buildguard", ConfigMapNamespace: "buildguard-node-agent", ConfigMapName: "buildguard-ca",
		Log: slog.New(slog.NewJSONHandler(&logs, nil))}
	for range 2 {
		if err := b.Sync(context.Background()); err == nil || !strings.Contains(err.Error(), "manifests/node-agent") {
			t.Fatalf("Sync without the ConfigMap = %v, want an error naming manifests/node-agent", err)
		}
	}
	if n := strings.Count(logs.String(), `"level":"WARN"`); n != 1 {
		t.Errorf("logged %d warnings, want 1:\n%s", n, logs.String())
	}
	v, err := cs.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(t.Context(), "buildguard", metav1.GetOptions{})
	if err != nil || string(v.Webhooks[0].ClientConfig.CABundle) != string(ca) {
		t.Errorf("validating webhook caBundle not set despite the missing ConfigMap (%v)", err)
	}
}

// countedCA is a CASource that sends on reads each time it was read.
type countedCA struct {
	CASource
	reads chan struct{}
}

func (c countedCA) CA(ctx context.Context) ([]byte, error) {
	defer func() { c.reads <- struct{}{} }()
	return c.CASource.CA(ctx)
}

// TestCABundleRun: Run syncs at once, then at every tick of its clock
// (every 5s by default): a CA created after the first sync is published
// at the next tick.
func TestCABundleRun(t *testing.T) {
	vwc, mwc := webhookObjects()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "buildguard-ca", Namespace: "buildguard-node-agent"}}
	cs := fake.NewClientset(vwc, mwc, cm)
	var logs syncbuffer.Buffer
	ca := countedCA{SecretCA{Client: cs, Namespace: "buildguard-system", Name: "buildguard-ca"}, make(chan struct{}, 8)}
	clk := clocktest.New(time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC))
	b := &CABundle{Client: cs, CA: ca, Webhook: "buildguard", ConfigMapNamespace: "buildguard-node-agent", ConfigMapName: "buildguard-ca",
		Log: slog.New(slog.NewJSONHandler(&logs, nil)), Clock: clk}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	wait, cancelWait := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancelWait()
	read := func(what string) {
		t.Helper()
		select {
		case <-ca.reads:
		case <-wait.Done():
			t.Fatalf("no read of the CA %s; log:\n%s", what, logs.String())
		}
	}
	read("at start")
	if err := clk.BlockUntil(wait, 1); err != nil {
		t.Fatalf("Run made no ticker on its clock: %v", err)
	}
	ca1 := newCA(t)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "buildguard-ca", Namespace: "buildguard-system"},
		Data: map[string][]byte{CAKey: ca1}}
	if _, err := cs.CoreV1().Secrets("buildguard-system").Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if v, _, c := published(t, cs); v != "" || c != "" {
		t.Fatalf("published before a tick: validating %q, configmap %q", v, c)
	}
	clk.Advance(5 * time.Second)
	read("at the first tick")
	// The next read begins once the first tick's sync is done.
	clk.Advance(5 * time.Second)
	read("at the second tick")
	if v, m, c := published(t, cs); v != string(ca1) || m != string(ca1) || c != string(ca1) {
		t.Errorf("after a tick: validating %q, mutating %q, configmap %q; want the CA in all three", v, m, c)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil", err)
	}
	if n := clk.Waiting(); n != 0 {
		t.Errorf("%d tickers left after Run returned, want 0", n)
	}
	for _, want := range []string{"waiting for the CA before publishing it", "CA published"} {
		if n := strings.Count(logs.String(), want); n != 1 {
			t.Errorf("log has %q %d times, want once:\n%s", want, n, logs.String())
		}
	}
}
