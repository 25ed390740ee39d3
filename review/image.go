package review

import (
	"cmp"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/records"
)

// digestRE is an image digest as the image page takes it.
var digestRE = regexp.MustCompile(`^(sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128})$`)

// Bounds of the image page.
const (
	imageDecisions   = 50 // the newest decisions listed
	imageBuilds      = 20 // builds per config digest
	imageConnections = 20 // connections per build
)

type imageData struct {
	Digest string
	// Refs are the references the image was admitted as, most recent
	// first.
	Refs          []string
	ConfigDigests []string
	Now           time.Time
	Partial       bool
	Decisions     []listRow
	More          bool   // there are more than Decisions
	AllHref       string // the list of all its decisions
	Workloads     []workloadRow
	// Rules counts the rules its listed decisions found.
	Rules []count
	// Checks are the signature and provenance steps of its newest
	// record, and Latest that record.
	Checks   []Event
	Latest   *listRow
	Findings []findingView
	Builds   []buildRow
	// BuildsError is set when the node reports could not be read.
	BuildsError string
}

type workloadRow struct {
	evidence.WorkloadCount
	Href  string
	Age   string
	Count []count
}

type buildRow struct {
	evidence.Build
	Connections []evidence.Connection
	// More: the node reported more connections during the build.
	More bool
}

// image shows one digest across all decisions: its references, its
// evidence, the workloads that ran it, and its decisions. A user who
// may see none of its decisions is told it does not exist, as for a
// digest never recorded.
func (h *Handler) image(w http.ResponseWriter, r *http.Request, s *session) {
	digest := strings.ToLower(r.PathValue("digest"))
	notFound := func() {
		h.fail(w, r, s, http.StatusNotFound, fmt.Sprintf("No decision that you may see recorded the image %q.", shorten.Text(r.PathValue("digest"), 80)))
	}
	if !digestRE.MatchString(digest) {
		notFound()
		return
	}
	now := h.c.Clock.Now()
	sc, ok := h.filterScope(w, r, s, "", time.Time{})
	if !ok {
		return
	}
	data := imageData{Digest: digest, Now: now, Partial: !sc.all,
		AllHref: listLink(everyVerdict("since", "all", "image", digest)...)}
	q := evidence.DecisionQuery{ImageGlob: digest, Verdicts: allVerdicts, Limit: imageDecisions + 1}
	if !sc.all {
		q.Namespaces = sc.namespaces
	}
	ctx, cancel := h.ctx(r)
	ds, err := h.c.Store.Decisions(ctx, q)
	var ws []evidence.WorkloadCount
	if err == nil {
		ws, err = h.c.Store.ImageWorkloads(ctx, digest, q.Namespaces)
	}
	cancel()
	if err != nil {
		h.c.Log.Error("review: image decisions not read", "digest", digest, "error", err)
		h.fail(w, r, s, http.StatusServiceUnavailable, "The decision store did not answer; try again later.")
		return
	}
	if len(ds) == 0 {
		notFound()
		return
	}
	if len(ds) > imageDecisions {
		ds, data.More = ds[:imageDecisions], true
	}
	rules := map[string]int{}
	for i, d := range ds {
		row := listRow{Decision: d, Age: duration.HumanDuration(max(now.Sub(d.Time), 0)), Images: imageCells(d)}
		data.Decisions = append(data.Decisions, row)
		for _, rule := range d.Rules {
			rules[rule]++
		}
		ims, _ := records.ParseImages(d.Images)
		for _, im := range ims {
			if !strings.EqualFold(im.Digest, digest) {
				continue
			}
			ref, _, _ := strings.Cut(im.Image, "@")
			if !slices.Contains(data.Refs, ref) {
				data.Refs = append(data.Refs, ref)
			}
			if i == 0 && data.Checks == nil {
				// The newest record says what the image was found to be.
				data.ConfigDigests = im.ConfigDigests
				data.Checks = checkEvents(im)
				for i := range data.Checks {
					data.Checks[i].Image, data.Checks[i].Digest = "", "" // the page's own
				}
				for _, f := range im.Findings {
					fv := findingView{FindingRecord: f}
					for _, k := range sortedKeys(f.Evidence) {
						fv.Evidence = append(fv.Evidence, [2]string{k, str(f.Evidence[k])})
					}
					data.Findings = append(data.Findings, fv)
				}
			}
		}
	}
	data.Latest = &data.Decisions[0]
	for _, rule := range sortedKeys(rules) {
		data.Rules = append(data.Rules, count{Label: rule, N: rules[rule], Href: listLink(everyVerdict("since", "all", "image", digest, "rule", rule)...)})
	}
	slices.SortStableFunc(data.Rules, func(a, b count) int { return cmp.Compare(b.N, a.N) })
	for _, wl := range ws {
		row := workloadRow{WorkloadCount: wl, Age: duration.HumanDuration(max(now.Sub(wl.Last), 0)),
			Href: listLink(everyVerdict("since", "all", "namespace", wl.Namespace, "kind", wl.Kind, "name", wl.Name, "image", digest)...)}
		for _, v := range allVerdicts {
			if n := wl.Verdicts[v]; n > 0 {
				row.Count = append(row.Count, count{Label: v, N: n,
					Href: listLink("since", "all", "namespace", wl.Namespace, "kind", wl.Kind, "name", wl.Name, "image", digest, "verdict", v)})
			}
		}
		data.Workloads = append(data.Workloads, row)
	}
	data.Builds, data.BuildsError = h.imageBuilds(r, data.ConfigDigests)
	h.render(w, http.StatusOK, "image", s, "Image "+shortDigest(digest), data)
}

// imageBuilds returns the builds nodes reported of these config digests,
// newest first, with the connections their nodes reported while they
// ran: the evidence as it stands now, which later reports may have added
// to since a decision was recorded.
func (h *Handler) imageBuilds(r *http.Request, configs []string) ([]buildRow, string) {
	var out []buildRow
	ctx, cancel := h.ctx(r)
	defer cancel()
	for _, cd := range configs {
		bs, err := h.c.Store.BuildsByImageID(ctx, cd)
		if err != nil {
			h.c.Log.Error("review: builds not read", "digest", cd, "error", err)
			return out, "the node reports could not be read"
		}
		for _, b := range bs[:min(len(bs), imageBuilds)] {
			row := buildRow{Build: b}
			from, to := b.Started, b.Finished
			if from.IsZero() {
				from = to
			}
			if to.IsZero() {
				to = from
			}
			if !from.IsZero() {
				cs, err := h.c.Store.Connections(ctx, b.Node, from, to, imageConnections+1)
				if err != nil {
					h.c.Log.Error("review: connections not read", "node", b.Node, "error", err)
					return out, "the node reports could not be read"
				}
				if len(cs) > imageConnections {
					cs, row.More = cs[:imageConnections], true
				}
				row.Connections = cs
			}
			out = append(out, row)
		}
	}
	slices.SortStableFunc(out, func(a, b buildRow) int { return buildAt(b).Compare(buildAt(a)) })
	return out, ""
}

func buildAt(b buildRow) time.Time {
	if !b.Finished.IsZero() {
		return b.Finished
	}
	return b.Started
}

// shortDigest is a digest's algorithm and first 12 hex digits.
func shortDigest(d string) string {
	alg, hex, ok := strings.Cut(d, ":")
	if !ok || len(hex) <= 12 {
		return d
	}
	return alg + ":" + hex[:12]
}
