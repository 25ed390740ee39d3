package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

// CABundle keeps the caBundle of every webhook in a
// ValidatingWebhookConfiguration equal to the CA certificate ("ca.crt")
// in a Secret: what cert-manager's CA injector does, for clusters that
// run buildguard's self-managed CA instead of cert-manager.
type CABundle struct {
	Client          kubernetes.Interface
	SecretNamespace string
	SecretName      string
	// Webhook is the ValidatingWebhookConfiguration's name.
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
	vwc, err := c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Get(ctx, c.Webhook, metav1.GetOptions{})
	if err != nil {
		return err
	}
	type clientConfig struct {
		CABundle []byte `json:"caBundle"`
	}
	type hook struct {
		Name         string       `json:"name"`
		ClientConfig clientConfig `json:"clientConfig"`
	}
	var patch []hook
	for _, w := range vwc.Webhooks {
		if !bytes.Equal(w.ClientConfig.CABundle, ca) {
			patch = append(patch, hook{Name: w.Name, ClientConfig: clientConfig{CABundle: ca}})
		}
	}
	if len(patch) == 0 {
		return nil
	}
	// A strategic merge patch merges webhooks by name and leaves
	// everything else of the configuration alone.
	body, err := json.Marshal(map[string]any{"webhooks": patch})
	if err != nil {
		return err
	}
	_, err = c.Client.AdmissionregistrationV1().ValidatingWebhookConfigurations().Patch(ctx, c.Webhook, types.StrategicMergePatchType, body, metav1.PatchOptions{})
	return err
}
