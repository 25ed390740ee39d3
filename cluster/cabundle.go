package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// CABundle keeps the caBundle of every webhook in the Validating- and
// MutatingWebhookConfiguration of one name equal to the CA certificate
// ("ca.crt") in a Secret: what cert-manager's CA injector does, for
// clusters that run buildguard's self-managed CA instead of cert-manager.
// A configuration that does not exist is skipped.
type CABundle struct {
	Client          kubernetes.Interface
	SecretNamespace string
	SecretName      string
	// Webhook is the webhook configurations' name.
	Webhook string
	// Interval is how often the two are compared. The default is 5s.
	Interval time.Duration
	Log      *slog.Logger
}

// Run keeps the bundle current until ctx ends.
func (c *CABundle) Run(ctx context.Context) error {
	interval := c.Interval
	if interval <= 0 {
		interval = 5 * time.Second
	}
	log := c.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := c.sync(ctx); err != nil {
			log.Warn("caBundle not synced", "webhook", c.Webhook, "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (c *CABundle) sync(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sec, err := c.Client.CoreV1().Secrets(c.SecretNamespace).Get(ctx, c.SecretName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	ca := sec.Data["ca.crt"]
	if len(ca) == 0 {
		return fmt.Errorf("secret %s/%s has no ca.crt yet", c.SecretNamespace, c.SecretName)
	}
	arv1 := c.Client.AdmissionregistrationV1()
	var errs []error
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
			errs = append(errs, err)
		}
	} else if !apierrors.IsNotFound(err) {
		errs = append(errs, err)
	}
	if !found && len(errs) == 0 {
		return fmt.Errorf("no webhook configuration named %s", c.Webhook)
	}
	return errors.Join(errs...)
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
