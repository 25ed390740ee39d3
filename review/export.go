package review

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"net/http"
	"strings"

	"buildguard.dev/buildguard/evidence"
	"buildguard.dev/buildguard/records"
)

// maxExport is the most decisions an export holds; exportPage how many
// it reads from the store at a time.
const (
	maxExport  = 100_000
	exportPage = 1000
)

// csvHeader names the columns of a CSV export.
var csvHeader = []string{"id", "time", "verdict", "mode", "operation", "namespace", "kind", "name", "user", "rules", "exceptions", "images"}

// export writes the decisions of the list's filter, all of them up to
// maxExport, newest first, as CSV or as a JSON array of the records of
// `buildguard denials -o json`. The list's page and limit do not apply.
func (h *Handler) export(format string) func(http.ResponseWriter, *http.Request, *session) {
	return func(w http.ResponseWriter, r *http.Request, s *session) {
		now := h.c.Clock.Now()
		q := r.URL.Query()
		q.Del("before")
		q.Del("after")
		q.Del("limit")
		f, dq, err := parseFilter(q, now)
		if err != nil {
			h.fail(w, r, s, http.StatusBadRequest, "The export's filter is not valid: "+err.Error())
			return
		}
		sc, ok := h.filterScope(w, r, s, f.Namespace, dq.Since)
		if !ok {
			return
		}
		dq.Namespaces, dq.Limit = sc.namespaces, exportPage
		// The first page is read before anything is written, so that a
		// store that does not answer is a 503, not an empty file.
		ctx, cancel := h.ctx(r)
		page, err := h.c.Store.Decisions(ctx, dq)
		cancel()
		if err != nil {
			h.c.Log.Error("review: decisions not exported", "error", err)
			h.fail(w, r, s, http.StatusServiceUnavailable, "The decision store did not answer; try again later.")
			return
		}
		name := "decisions-" + now.UTC().Format("20060102T150405Z")
		bw := bufio.NewWriterSize(w, 64<<10)
		var (
			write  func(d evidence.Decision) error
			finish func() error
		)
		switch format {
		case "csv":
			w.Header().Set("Content-Type", "text/csv; charset=utf-8")
			w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.csv"`)
			cw := csv.NewWriter(bw)
			if err := cw.Write(csvHeader); err != nil {
				return
			}
			write = func(d evidence.Decision) error { return cw.Write(csvRow(d)) }
			finish = func() error { cw.Flush(); return cw.Error() }
		default:
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.Header().Set("Content-Disposition", `attachment; filename="`+name+`.json"`)
			enc := json.NewEncoder(bw)
			enc.SetEscapeHTML(false)
			n := 0
			bw.WriteString("[\n")
			write = func(d evidence.Decision) error {
				if n > 0 {
					bw.WriteString(",")
				}
				n++
				return enc.Encode(records.ToJSON(d))
			}
			finish = func() error { _, err := bw.WriteString("]\n"); return err }
		}
		written := 0
		for len(page) > 0 && written < maxExport {
			for _, d := range page[:min(len(page), maxExport-written)] {
				if err := write(d); err != nil {
					return // the client went away
				}
				written++
			}
			if len(page) < exportPage || written == maxExport {
				break
			}
			dq.Before = evidence.CursorOf(page[len(page)-1])
			ctx, cancel := h.ctx(r)
			page, err = h.c.Store.Decisions(ctx, dq)
			cancel()
			if err != nil {
				// Half a file with a 200 is all HTTP allows now; the log
				// says why it ends early.
				h.c.Log.Error("review: export cut short", "written", written, "error", err)
				break
			}
		}
		if finish() == nil {
			bw.Flush()
		}
		h.c.Log.Info("review: decisions exported", "user", s.User.Name, "format", format, "decisions", written)
	}
}

// csvRow is a decision as a CSV row. A cell that a spreadsheet would
// take for a formula (=, +, -, @, tab or carriage return first) is
// written with a leading apostrophe: a workload name or a user is text
// of whoever made the request.
func csvRow(d evidence.Decision) []string {
	var images []string
	for _, im := range imageCells(d) {
		if im.Digest != "" && !strings.Contains(im.Ref, "@") {
			images = append(images, im.Ref+"@"+im.Digest)
		} else {
			images = append(images, im.Ref)
		}
	}
	row := []string{d.ID, records.ToJSON(d).Time, d.Verdict, d.Mode, d.Operation, d.Namespace, d.Kind, d.Name, d.User,
		strings.Join(d.Rules, " "), strings.Join(d.Exceptions, " "), strings.Join(images, " ")}
	for i, c := range row {
		if c != "" && strings.ContainsRune("=+-@\t\r", rune(c[0])) {
			row[i] = "'" + c
		}
	}
	return row
}
