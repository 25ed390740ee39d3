// Package policysource keeps the policies and exceptions in force, from
// where they come: a policy file (File), the cluster's
// ClusterBuildPolicies and BuildPolicyExceptions (CRD), and an
// exceptions file that goes with a policy file (ExceptionFile). Each is
// an engine.Policies; a Reloader re-reads the files when they change.
// What does not validate is never half-applied: what was in force stays.
package policysource
