package e2e

import (
	"fmt"
	"strings"
)

// webhookTemplate mirrors the webhook configurations of manifests/base
// with URLs on loopback instead of a Service: the same rules, exclusions
// and failure policies.
const webhookTemplate = `apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: buildguard
webhooks:
- name: validate.buildguard.dev
  clientConfig:
    url: %[1]s
%[3]s  failurePolicy: Fail
  sideEffects: None
  admissionReviewVersions: ["v1"]
  timeoutSeconds: 5
  matchPolicy: Equivalent
%[4]s---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: buildguard
webhooks:
- name: mutate.buildguard.dev
  clientConfig:
    url: %[2]s
%[3]s  failurePolicy: Ignore
  reinvocationPolicy: IfNeeded
  sideEffects: None
  admissionReviewVersions: ["v1"]
  timeoutSeconds: 5
  matchPolicy: Equivalent
%[4]s`

const policyTemplate = `apiVersion: buildguard.dev/v1alpha1
kind: ClusterBuildPolicy
metadata:
  name: default
spec:
  mode: enforce
  failurePolicy: deny
  registries:
    allow: ["%s/e2e/*"]
  freshness:
    minAge: %s
  trustedSources: ["deb.debian.org"]
  nodeEvidence:
    approvedBuildNodes: ["ci-runner-*"]
    trustedDestinations: ["10.0.0.0/8", "*.debian.org"]
`

// webhookRules and webhookNamespaces are what both webhooks share.
const webhookRules = `  rules:
  - apiGroups: [""]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["pods", "pods/ephemeralcontainers", "replicationcontrollers"]
    scope: Namespaced
  - apiGroups: ["apps"]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["deployments", "replicasets", "statefulsets", "daemonsets"]
    scope: Namespaced
  - apiGroups: ["batch"]
    apiVersions: ["v1"]
    operations: ["CREATE", "UPDATE"]
    resources: ["jobs", "cronjobs"]
    scope: Namespaced
`

const webhookNamespaces = `  namespaceSelector:
    matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: NotIn
      values: ["kube-system", "kube-public", "kube-node-lease", "buildguard-system", "buildguard-node-agent"]
`

// WebhookYAML is the Validating- and MutatingWebhookConfiguration
// "buildguard" calling buildguard at validateURL (…/validate) and the
// same server's /mutate.
func WebhookYAML(validateURL string) string {
	return fmt.Sprintf(webhookTemplate, validateURL, strings.TrimSuffix(validateURL, "/validate")+"/mutate", webhookRules, webhookNamespaces)
}

// AgentPodYAML is a Node and a pod of the node agent's service account
// on it, node-agent-<node> in buildguard-node-agent (which must exist),
// tolerating everything as the DaemonSet's pods do (no kubelet runs: the
// node goes NotReady). A token bound to the pod carries the node's name,
// as the agent's projected token does, and buildguard takes reports made
// with it as that node's:
//
//	kubectl create token buildguard-node-agent -n buildguard-node-agent --audience=buildguard \
//	    --bound-object-kind=Pod --bound-object-name=node-agent-<node>
func AgentPodYAML(node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Node
metadata: {name: %[1]s}
---
apiVersion: v1
kind: Pod
metadata: {name: node-agent-%[1]s, namespace: buildguard-node-agent}
spec:
  nodeName: %[1]s
  serviceAccountName: buildguard-node-agent
  automountServiceAccountToken: false
  tolerations: [{operator: Exists}]
  containers: [{name: agent, image: agent:1}]
`, node)
}

// PolicyYAML is the ClusterBuildPolicy "default": enforce, images only
// from registryHost's e2e/ repositories, fresh below minAge.
func PolicyYAML(registryHost, minAge string) string {
	return fmt.Sprintf(policyTemplate, registryHost, minAge)
}
