package policy

import (
	"fmt"
	"time"
)

// RuleInconsistentCreatedTime: the image's own metadata contradicts its
// config's created time: a history entry is dated after it, or a node
// reported building the image after it (see inconsistentCreated). An
// image vouched for by verified provenance from an approved builder is
// not flagged: reproducible builds write old created times on purpose.
const RuleInconsistentCreatedTime RuleID = "inconsistent-created-time"

// Time sources of fresh-image: where the time it judged came from, in
// the finding's evidence (timeSource).
const (
	// TimeSourceAttestation: the build finish time of a verified SLSA
	// provenance attestation from an approved builder and source.
	TimeSourceAttestation = "attestation"
	// TimeSourceTransparencyLog: the integrated time of a verified
	// transparency-log entry of a signature or attestation of the digest.
	TimeSourceTransparencyLog = "transparency-log"
	// TimeSourceTimestampAuthority: a verified RFC 3161 timestamp of a
	// signature or attestation of the digest.
	TimeSourceTimestampAuthority = "timestamp-authority"
	// TimeSourceNodeReport: a node outside nodeEvidence.approvedBuildNodes
	// reported building the digest.
	TimeSourceNodeReport = "node-report"
	// TimeSourceConfig: the config's created time, which the build writes
	// itself; used only when there is no other.
	TimeSourceConfig = "config"
)

// trustedTime is a time the digest provably existed, and where it comes
// from.
type trustedTime struct {
	at     time.Time
	source string
	detail string // e.g. the node, or the signer
}

// trustedTimes returns, per platform digest of img, the earliest time the
// digest provably existed: a verified attestation's build finish time
// (from an approved builder and source), the transparency-log or RFC 3161
// time of a verified signature or attestation of the digest or of its
// index, or the finish of a build a node outside the approved build nodes
// reported. Config created is not one of them: the build writes it.
func (p *Policy) trustedTimes(c Container, img *Image, now time.Time) map[string]trustedTime {
	var out map[string]trustedTime // most images have none: no map
	consider := func(digest string, t trustedTime) {
		if t.at.IsZero() || t.at.Unix() <= 0 {
			return
		}
		if out == nil {
			out = map[string]trustedTime{}
		}
		if cur, ok := out[digest]; !ok || t.at.Before(cur.at) {
			out[digest] = t
		}
	}
	if pv := c.Provenance[p.name]; pv != nil && p.prov.enabled {
		for _, pl := range img.Platforms {
			on := func(d string) bool { return d == pl.Digest || (img.Index && d == img.Digest) }
			for _, a := range pv.Attestations {
				if !a.Verified || !(covers(a, pl.Digest) || (img.Index && covers(a, img.Digest))) {
					continue
				}
				if a.IsProvenance() && !a.FinishedOn.IsZero() && p.builderApproved(a.BuilderID) && p.sourceApproved(a.Sources) {
					consider(pl.Digest, trustedTime{a.FinishedOn, TimeSourceAttestation, "builder " + a.BuilderID})
				}
				consider(pl.Digest, trustedTime{a.SignedAt, a.SignedAtSource, "attestation by " + signerOf(a.KeyFingerprint, a.Issuer, a.Subject)})
			}
			for _, s := range pv.Signatures {
				if s.Verified && on(s.On) {
					consider(pl.Digest, trustedTime{s.SignedAt, s.SignedAtSource, "signature by " + signatureSigner(s)})
				}
			}
		}
	}
	if p.evidence != nil {
		for _, b := range c.Builds {
			if b.MatchedBy != "image-id" || p.approvedNode(b.Node) || p.buildTimeProblem(b, img, now) != nil {
				continue
			}
			at := b.Finished
			if at.IsZero() {
				at = b.Started
			}
			for _, pl := range img.Platforms {
				if b.Platform == "" || b.Platform == pl.Platform {
					consider(pl.Digest, trustedTime{at, TimeSourceNodeReport, "node " + b.Node})
				}
			}
		}
	}
	return out
}

func (p *Policy) approvedNode(node string) bool {
	if p.evidence == nil {
		return false
	}
	_, ok := matchAny(p.evidence.approved, node)
	return ok
}

// provenanceVouches reports whether a verified SLSA provenance
// attestation from an approved builder and source covers digest (or the
// index of img): a build the policy trusts made it.
func (p *Policy) provenanceVouches(c Container, img *Image, digest string) bool {
	pv := c.Provenance[p.name]
	if pv == nil || !p.prov.enabled {
		return false
	}
	for _, a := range pv.Attestations {
		if a.Verified && a.IsProvenance() && (covers(a, digest) || (img.Index && covers(a, img.Digest))) &&
			p.builderApproved(a.BuilderID) && p.sourceApproved(a.Sources) {
			return true
		}
	}
	return false
}

// inconsistentCreated flags platforms whose config created time their
// own metadata contradicts:
//   - a history entry dated more than freshness.maxClockSkew after it:
//     created is written when the build ends, after every step;
//   - a build of the digest, reported by a node outside
//     nodeEvidence.approvedBuildNodes, that started more than
//     freshness.maxClockSkew after it (the build wrote created, so
//     created cannot precede it).
//
// Not flagged: a missing or epoch-zero created time (reproducible builds
// write it; it claims nothing), a platform vouched for by verified
// provenance from an approved builder and source (reproducible builds
// write SOURCE_DATE_EPOCH, a commit date, and a fully cached rebuild
// keeps the first build's time), builds on approved build nodes (a
// pipeline's cached rebuild), and builds whose own time is implausible
// (implausible-build-time).
func (p *Policy) inconsistentCreated(c Container, img *Image, now time.Time) []Finding {
	var out []Finding
	for _, pl := range img.Platforms {
		if pl.Created.IsZero() || pl.Created.Unix() <= 0 || p.provenanceVouches(c, img, pl.Digest) {
			continue
		}
		// Nearly every image agrees with itself: look for the
		// contradiction before building its evidence, which every cached
		// review would otherwise pay for per container.
		step := -1
		for i, h := range pl.History {
			if h.Created.Sub(pl.Created) > p.maxClockSkew {
				step = i
				break
			}
		}
		var build *BuildEvidence
		var start time.Time
		if step < 0 && p.evidence != nil {
			for i := range c.Builds {
				b := &c.Builds[i]
				start = b.Started
				if start.IsZero() {
					start = b.Finished
				}
				if b.MatchedBy != "image-id" || (b.Platform != "" && b.Platform != pl.Platform) || p.approvedNode(b.Node) ||
					p.buildTimeProblem(*b, img, now) != nil || start.Sub(pl.Created) <= p.maxClockSkew {
					continue
				}
				build = b
				break
			}
		}
		if step < 0 && build == nil {
			continue
		}
		created := pl.Created.UTC().Format(time.RFC3339)
		ev := map[string]any{"created": created, "configDigest": pl.ConfigDigest, "maxClockSkew": human(p.maxClockSkew)}
		on := ""
		if pl.Platform != "" {
			ev["platform"] = pl.Platform
			on = " (" + pl.Platform + ")"
		}
		var msg string
		if step >= 0 {
			h := pl.History[step]
			ev["reason"], ev["stepIndex"], ev["stepCreated"] = "history-after-created", step, h.Created.UTC().Format(time.RFC3339)
			msg = fmt.Sprintf("image%s claims to be created at %s, but its build step %d is dated %s, %s later",
				on, created, step, ev["stepCreated"], human(h.Created.Sub(pl.Created).Round(time.Second)))
		} else {
			ev["reason"], ev["node"], ev["buildStarted"] = "created-before-build", build.Node, start.UTC().Format(time.RFC3339)
			msg = fmt.Sprintf("image%s claims to be created at %s, %s before node %s started building it (%s)",
				on, created, human(start.Sub(pl.Created).Round(time.Second)), build.Node, ev["buildStarted"])
		}
		out = append(out, p.finding(RuleInconsistentCreatedTime, SeverityHigh,
			msg+": its metadata contradicts itself, the mark of a created time set back to pass freshness", ev))
	}
	return out
}
