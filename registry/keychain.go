package registry

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	k8sauthn "github.com/google/go-containerregistry/pkg/authn/kubernetes"
	"k8s.io/client-go/kubernetes"

	"buildguard.dev/buildguard/internal/clock"
)

// StaticKeychain gives every pod the same credentials: the docker config
// file's (authn.DefaultKeychain) when buildguard runs outside a cluster.
type StaticKeychain struct{ Auth Auth }

// For implements engine.Keychains.
func (s StaticKeychain) For(context.Context, string, string, []string) (Auth, error) {
	return s.Auth, nil
}

// DockerConfig is the keychain of the docker config file ($DOCKER_CONFIG
// or ~/.docker/config.json), and anonymous access where it has no entry.
func DockerConfig() Auth { return Auth{Key: "docker-config", Keychain: authn.DefaultKeychain} }

// DefaultKeychainTTL is how long a pod's keychain is reused.
const DefaultKeychainTTL = 30 * time.Second

// KubernetesKeychains builds a pod's keychain from its imagePullSecrets
// and its service account's, as the kubelet would, with
// go-containerregistry's pkg/authn/kubernetes (the Kubernetes half of
// k8schain; the cloud half is left out because it asks metadata services
// on link-local addresses, which buildguard never contacts). Keychains
// are reused for TTL so a rollout does not read the same secrets for
// every pod.
type KubernetesKeychains struct {
	Client kubernetes.Interface
	// TTL is how long a keychain is reused. The default is
	// DefaultKeychainTTL.
	TTL time.Duration
	// Clock tells the time keychains expire. The default, nil, is the
	// real clock.
	Clock clock.Clock

	once  sync.Once
	cache *lru[Auth]
}

// For implements engine.Keychains.
func (k *KubernetesKeychains) For(ctx context.Context, namespace, serviceAccount string, pullSecrets []string) (Auth, error) {
	k.once.Do(func() { k.cache = newLRU[Auth](1024) })
	now := clock.OrReal(k.Clock).Now
	ttl := k.TTL
	if ttl <= 0 {
		ttl = DefaultKeychainTTL
	}
	if serviceAccount == "" {
		serviceAccount = "default"
	}
	key := namespace + "/" + serviceAccount + "/" + strings.Join(pullSecrets, ",")
	if a, ok := k.cache.get(key, now()); ok {
		return a, nil
	}
	kc, err := k8sauthn.New(ctx, k.Client, k8sauthn.Options{
		Namespace:          namespace,
		ServiceAccountName: serviceAccount,
		ImagePullSecrets:   pullSecrets,
	})
	if err != nil {
		return Auth{}, err
	}
	// A keychain's key carries the time it was built: pullers are shared
	// per key, and rotated secrets must not meet an old authenticated
	// transport.
	a := Auth{Key: key + "@" + now().Format(time.RFC3339Nano), Keychain: kc}
	k.cache.add(key, a, now().Add(ttl))
	return a, nil
}
