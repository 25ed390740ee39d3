package cluster

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"buildguard.dev/buildguard/internal/clock"
	"buildguard.dev/buildguard/internal/logger"
)

// CAKey is the key of the CA certificate in a Secret (cert-manager's and
// the self-managed CA's) and in the ConfigMap CABundle publishes.
const CAKey = "ca.crt"

// CASource reads the CA certificate (PEM) that signs buildguard's serving
// certificate.
type CASource interface {
	CA(ctx context.Context) ([]byte, error)
}

// SecretCA is the key ca.crt of a Secret: the self-managed CA's Secret,
// which buildguard creates on first start.
type SecretCA struct {
	Client          kubernetes.Interface
	Namespace, Name string
}

// CA implements CASource. A Secret that does not exist, or has no ca.crt
// yet, is a *CANotReadyError.
func (s SecretCA) CA(ctx context.Context) ([]byte, error) {
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.Name, metav1.GetOptions{})
	where := "secret " + s.Namespace + "/" + s.Name
	switch {
	case apierrors.IsNotFound(err):
		return nil, &CANotReadyError{Source: where, Err: err}
	case err != nil:
		return nil, fmt.Errorf("%s: %w", where, err)
	case len(sec.Data[CAKey]) == 0:
		return nil, &CANotReadyError{Source: where, Err: errors.New("no " + CAKey + " yet")}
	}
	return sec.Data[CAKey], nil
}

// FileCA is a PEM file: the ca.crt that cert-manager writes beside the
// serving certificate. A file that does not exist is a *CANotReadyError.
type FileCA string

// CA implements CASource.
func (f FileCA) CA(context.Context) ([]byte, error) {
	b, err := os.ReadFile(string(f))
	if errors.Is(err, os.ErrNotExist) {
		return nil, &CANotReadyError{Source: string(f), Err: err}
	}
	return b, err
}

// CANotReadyError says the CA does not exist yet: normal for the first
// seconds of a first install, while a replica creates it (or cert-manager
// issues it).
type CANotReadyError struct {
	Source string
	Err    error
}

func (e *CANotReadyError) Error() string {
	return fmt.Sprintf("CA not created yet (%s): %v", e.Source, e.Err)
}

func (e *CANotReadyError) Unwrap() error { return e.Err }

// CABundle keeps the CA certificate that signs buildguard's serving
// certificate where its clients look for it:
//   - the caBundle of every webhook in the Validating- and
//     MutatingWebhookConfiguration named Webhook (what cert-manager's CA
//     injector does, for clusters that run buildguard's self-managed CA
//     instead); a configuration that does not exist is skipped;
//   - the key ca.crt of the ConfigMap ConfigMapNamespace/ConfigMapName,
//     which reporters in other namespaces mount (a Secret cannot be
//     mounted across namespaces): the node agents'. The ConfigMap must
//     exist; it is updated, never created.
type CABundle struct {
	Client kubernetes.Interface
	// CA is where the CA certificate is read. Required.
	CA CASource
	// Webhook is the webhook configurations' name; empty for none.
	Webhook string
	// ConfigMapNamespace and ConfigMapName name the ConfigMap; empty for
	// none.
	ConfigMapNamespace, ConfigMapName string
	// Interval is how often the CA and its copies are compared. The
	// default is 5s.
	Interval time.Duration
	Log      *slog.Logger
	// Clock ticks every Interval. The default, nil, is the real clock.
	Clock clock.Clock

	lastErr string // the error last logged, so that a lasting one is logged once
}

// Run keeps the copies current until ctx ends. A failure is logged when
// it first happens and when it changes, not at every interval; a CA not
// created yet at info level, as it is expected on a first start.
func (c *CABundle) Run(ctx context.Context) error {
	interval := c.Interval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	t := clock.OrReal(c.Clock).NewTicker(interval)
	defer t.Stop()
	for {
		c.Sync(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
		}
	}
}

// Sync compares the CA with its copies once, updates those that differ,
// and logs the outcome as Run does. It returns the error logged, if any.
func (c *CABundle) Sync(ctx context.Context) error {
	log := logger.OrDiscard(c.Log)
	changed, err := c.sync(ctx)
	if err == nil {
		if c.lastErr != "" {
			log.Info("CA published", "targets", c.targets())
		} else if len(changed) > 0 {
			log.Info("CA published", "targets", changed)
		}
		c.lastErr = ""
		return nil
	}
	if msg := err.Error(); msg != c.lastErr {
		c.lastErr = msg
		var nr *CANotReadyError
		if errors.As(err, &nr) {
			log.Info("waiting for the CA before publishing it", "targets", c.targets(), "error", err)
		} else {
			log.Warn("CA not published; retrying", "targets", c.targets(), "error", err)
		}
	}
	return err
}

func (c *CABundle) targets() []string {
	var t []string
	if c.Webhook != "" {
		t = append(t, "webhookconfigurations/"+c.Webhook)
	}
	if c.ConfigMapName != "" {
		t = append(t, "configmap/"+c.ConfigMapNamespace+"/"+c.ConfigMapName)
	}
	return t
}

// sync returns the targets it updated.
func (c *CABundle) sync(ctx context.Context) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	ca, err := c.CA.CA(ctx)
	if err != nil {
		return nil, err
	}
	if err := checkPEM(ca); err != nil {
		return nil, err
	}
	var changed []string
	var errs []error
	if c.Webhook != "" {
		ch, err := c.syncWebhooks(ctx, ca)
		changed = append(changed, ch...)
		errs = append(errs, err)
	}
	if c.ConfigMapName != "" {
		ok, err := c.syncConfigMap(ctx, ca)
		if ok {
			changed = append(changed, "configmap/"+c.ConfigMapNamespace+"/"+c.ConfigMapName)
		}
		errs = append(errs, err)
	}
	return changed, errors.Join(errs...)
}

// checkPEM refuses a CA that holds no certificate: a torn or wrong file
// must not replace a working bundle.
func checkPEM(ca []byte) error {
	rest, n := ca, 0
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			return fmt.Errorf("CA: a PEM block of type %q, want CERTIFICATE", b.Type)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			return fmt.Errorf("CA: %w", err)
		}
		n++
	}
	if n == 0 || len(bytes.TrimSpace(rest)) > 0 {
		return errors.New("CA: not a PEM certificate bundle")
	}
	return nil
}

func (c *CABundle) syncWebhooks(ctx context.Context, ca []byte) ([]string, error) {
	arv1 := c.Client.AdmissionregistrationV1()
	var errs []error
	var changed []string
	found := false
	if vwc, err := arv1.ValidatingWebhookConfigurations().Get(ctx, c.Webhook, metav1.GetOptions{}); err == nil {
		found = true
		var have [][]byte
		var names []string
		for _, w := range vwc.Webhooks {
			names, have = append(names, w.Name), append(have, w.ClientConfig.CABundle)
		}
		if body := bundlePatch(names, have, ca); body != nil {
			_, err := arv1.ValidatingWebhookConfigurations().Patch(ctx, c.Webhook, types.StrategicMergePatchType, body, metav1.PatchOptions{})
			if err == nil {
				changed = append(changed, "validatingwebhookconfiguration/"+c.Webhook)
			}
			errs = append(errs, err)
		}
	} else if !apierrors.IsNotFound(err) {
		errs = append(errs, err)
	}
	if mwc, err := arv1.MutatingWebhookConfigurations().Get(ctx, c.Webhook, metav1.GetOptions{}); err == nil {
		found = true
		var have [][]byte
		var names []string
		for _, w := range mwc.Webhooks {
			names, have = append(names, w.Name), append(have, w.ClientConfig.CABundle)
		}
		if body := bundlePatch(names, have, ca); body != nil {
			_, err := arv1.MutatingWebhookConfigurations().Patch(ctx, c.Webhook, types.StrategicMergePatchType, body, metav1.PatchOptions{})
			if err == nil {
				changed = append(changed, "mutatingwebhookconfiguration/"+c.Webhook)
			}
			errs = append(errs, err)
		}
	} else if !apierrors.IsNotFound(err) {
		errs = append(errs, err)
	}
	if !found && len(errs) == 0 {
		return nil, fmt.Errorf("no webhook configuration named %s", c.Webhook)
	}
	return changed, errors.Join(errs...)
}

// syncConfigMap reports whether it updated the ConfigMap.
func (c *CABundle) syncConfigMap(ctx context.Context, ca []byte) (bool, error) {
	cms := c.Client.CoreV1().ConfigMaps(c.ConfigMapNamespace)
	cm, err := cms.Get(ctx, c.ConfigMapName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, fmt.Errorf("configmap %s/%s does not exist (it comes with manifests/node-agent): %w", c.ConfigMapNamespace, c.ConfigMapName, err)
	}
	if err != nil {
		return false, fmt.Errorf("configmap %s/%s: %w", c.ConfigMapNamespace, c.ConfigMapName, err)
	}
	if cm.Data[CAKey] == string(ca) {
		return false, nil
	}
	// A merge patch of the one key: whatever else the ConfigMap holds,
	// and who manages it, is left alone.
	body, _ := json.Marshal(map[string]any{"data": map[string]string{CAKey: string(ca)}}) // strings always marshal
	if _, err := cms.Patch(ctx, c.ConfigMapName, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		return false, fmt.Errorf("configmap %s/%s: %w", c.ConfigMapNamespace, c.ConfigMapName, err)
	}
	return true, nil
}

// bundlePatch is a strategic merge patch setting caBundle on the named
// webhooks whose bundle differs from ca, or nil when none does. Webhooks
// merge by name, so nothing else of the configuration changes.
func bundlePatch(names []string, have [][]byte, ca []byte) []byte {
	type clientConfig struct {
		CABundle []byte `json:"caBundle"`
	}
	type hook struct {
		Name         string       `json:"name"`
		ClientConfig clientConfig `json:"clientConfig"`
	}
	var patch []hook
	for i, n := range names {
		if !bytes.Equal(have[i], ca) {
			patch = append(patch, hook{Name: n, ClientConfig: clientConfig{CABundle: ca}})
		}
	}
	if len(patch) == 0 {
		return nil
	}
	body, _ := json.Marshal(map[string]any{"webhooks": patch}) // plain structs always marshal
	return body
}
