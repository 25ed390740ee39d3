// Package cluster is what buildguard's server keeps in the Kubernetes API
// beside judging: the CA of its serving certificate in the caBundle of
// its webhook configurations and in a ConfigMap for the node agents
// (CABundle), Warning Events about workloads (Events), and the Lease that
// elects the one replica writing the status of ClusterBuildPolicies and
// BuildPolicyExceptions (StatusLease).
package cluster
