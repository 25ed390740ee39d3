package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/policy"
)

// clusterPolicyWithProvenance uses every signature and attestation
// setting of issue 16: GitHub signers, Notation, VSAs, and the new rule
// IDs.
const clusterPolicyWithProvenance = `apiVersion: buildguard.dev/v1alpha1
kind: ClusterBuildPolicy
metadata:
  name: provenance
spec:
  registries:
    allow: ["ghcr.io/acme/**"]
  rules:
    vsa-failed: deny
    vsa-stale: warn
    inconsistent-created-time: warn
  signatures:
    required: true
    trustedRoot: /etc/buildguard/trusted_root.jsonl
    github:
      - repository: acme/shop
        signerWorkflow: acme/shared/.github/workflows/build.yml
        sourceRef: "refs/tags/v*"
        denySelfHostedRunners: true
    notation:
      trustStores:
        - {name: acme, type: ca, certificates: ["/etc/buildguard/notation/acme.pem"]}
        - {name: tsa, type: tsa, certificates: ["/etc/buildguard/notation/tsa.pem"]}
      trustPolicies:
        - name: production
          registryScopes: ["ghcr.io/acme/shop"]
          verificationLevel: permissive
          trustStores: ["ca:acme", "tsa:tsa"]
          trustedIdentities: ["x509.subject: C=US, ST=WA, O=Acme, CN=release"]
          verifyTimestamp: afterCertExpiry
      revocation:
        crls: ["/etc/buildguard/notation/acme.crl"]
  provenance:
    required: true
    vsa:
      verifiers: ["https://verifier.acme.example/*"]
      minLevels: ["SLSA_BUILD_LEVEL_3"]
      maxAge: 72h
`

// TestClusterBuildPolicyProvenanceFields: a real API server accepts the
// new fields of ClusterBuildPolicy (schema and CEL rules), keeps them (no
// pruning), and what it stores compiles to the same trust settings as
// the policy file; what the CEL rules forbid it refuses.
func TestClusterBuildPolicyProvenanceFields(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	e := startEnv(t, ctx, t.TempDir())
	root, err := Root()
	if err != nil {
		t.Fatal(err)
	}
	e.mustKubectl("", "apply", "-f", filepath.Join(root, "manifests", "crd"))
	e.applyPolicy(clusterPolicyWithProvenance)

	out := e.mustKubectl("", "get", "clusterbuildpolicy", "provenance", "-o", "json")
	var obj struct {
		Spec json.RawMessage `json:"spec"`
	}
	if err := json.Unmarshal([]byte(out), &obj); err != nil {
		t.Fatal(err)
	}
	var spec v1alpha1.PolicySpec
	dec := json.NewDecoder(bytes.NewReader(obj.Spec))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		t.Fatalf("stored spec does not decode strictly: %v\n%s", err, obj.Spec)
	}
	p, err := policy.CompileNamed("provenance", spec.Spec)
	if err != nil {
		t.Fatalf("stored spec does not compile: %v", err)
	}
	ts := p.Trust()
	if len(ts.GitHub) != 1 || !ts.GitHub[0].Identity.DenySelfHostedRunners || ts.GitHub[0].Identity.SourceRef != "refs/tags/v*" {
		t.Errorf("github identities after the round trip = %+v", ts.GitHub)
	}
	if n := ts.Notation; n == nil || len(n.TrustStores) != 2 || n.TrustPolicies[0].VerificationLevel != "permissive" || n.TrustPolicies[0].VerifyTimestamp != "afterCertExpiry" || len(n.Revocation.CRLs) != 1 {
		t.Errorf("notation after the round trip = %+v", n)
	}
	if v := spec.Provenance.VSA; v == nil || v.MaxAge.Duration != 72*time.Hour || v.MinLevels[0] != "SLSA_BUILD_LEVEL_3" {
		t.Errorf("vsa after the round trip = %+v", v)
	}
	if a := p.Action(policy.RuleVSAStale); a != policy.ActionWarn {
		t.Errorf("rules.vsa-stale = %s, want warn", a)
	}

	for name, bad := range map[string][2]string{
		"repository and owner":     {"repository: acme/shop", "repository: acme/shop\n        owner: acme"},
		"revocation neither":       {`crls: ["/etc/buildguard/notation/acme.crl"]`, "{}"},
		"revocation both":          {`crls: ["/etc/buildguard/notation/acme.crl"]`, `crls: ["/etc/buildguard/notation/acme.crl"]` + "\n        \"off\": true"},
		"level skip":               {"verificationLevel: permissive", "verificationLevel: skip"},
		"bad level name":           {`minLevels: ["SLSA_BUILD_LEVEL_3"]`, `minLevels: ["level3"]`},
		"vsa without verifiers":    {`verifiers: ["https://verifier.acme.example/*"]`, "verifiers: []"},
		"unknown rule still fails": {"vsa-failed: deny", "vsa-failure: deny"},
	} {
		y := strings.Replace(clusterPolicyWithProvenance, bad[0], bad[1], 1)
		if y == clusterPolicyWithProvenance {
			t.Fatalf("%s: the replacement did not apply", name)
		}
		y = strings.Replace(y, "name: provenance", "name: bad", 1)
		if out, err := e.kubectl(y, "apply", "--dry-run=server", "-f", "-"); err == nil {
			t.Errorf("%s: the API server accepted it: %s", name, out)
		} else if !strings.Contains(err.Error(), "Invalid value") && !strings.Contains(err.Error(), "Unsupported value") && !strings.Contains(err.Error(), "should") && !strings.Contains(err.Error(), "must") {
			t.Errorf("%s: refused, but not by the schema: %v", name, err)
		} else if testing.Verbose() {
			t.Logf("%s: %v", name, err)
		}
	}
}
