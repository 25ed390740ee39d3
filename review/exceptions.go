package review

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/util/duration"

	"buildguard.dev/buildguard/apis/v1alpha1"
	"buildguard.dev/buildguard/internal/shorten"
	"buildguard.dev/buildguard/policy"
)

// listExceptions is the permission to see the exceptions of namespace
// ("": cluster-wide, which a policy's own need).
func listExceptions(namespace string) Attributes {
	return Attributes{Verb: "list", Group: v1alpha1.Group, Resource: v1alpha1.ExceptionResourceName, Namespace: namespace}
}

// deleteExceptions is the permission to revoke an exception in namespace.
func deleteExceptions(namespace string) Attributes {
	return Attributes{Verb: "delete", Group: v1alpha1.Group, Resource: v1alpha1.ExceptionResourceName, Namespace: namespace}
}

// Where an exception comes from.
const (
	SourceResource   = "BuildPolicyException"
	SourcePolicy     = "ClusterBuildPolicy"
	SourcePolicyFile = "policy file"
	SourceFile       = "exceptions file"
)

// Exception is an exception in force or expired, as the exceptions page
// lists it.
type Exception struct {
	// Source is where it comes from: SourceResource, SourcePolicy (Policy
	// names the ClusterBuildPolicy), SourcePolicyFile or SourceFile.
	Source string
	Policy string
	// Namespace is where it applies; "" for a policy's own, which applies
	// in every namespace the policy governs.
	Namespace string
	Name      string
	// UID is a BuildPolicyException's, so that a revocation deletes the
	// one that was listed and not another made since under its name.
	UID string
	// Recorded is the name decisions record when it admits an image.
	Recorded   string
	Images     []string
	Reason     string
	ApprovedBy string
	// GrantedBy, GrantedAt and Decision are set for those granted in the
	// review UI.
	GrantedBy string
	GrantedAt time.Time
	Decision  string
	Expires   time.Time
	// Revocable: the UI can delete it (not a policy's own).
	Revocable bool
	// Problem says why it does not apply (an expiry that does not parse),
	// or is "".
	Problem string
}

// ExceptionSource lists exceptions and revokes them.
type ExceptionSource interface {
	// Exceptions returns every exception there is.
	Exceptions(ctx context.Context) ([]Exception, error)
	// Revoke deletes the exception ref names. It returns an error
	// wrapping ErrExceptionGone when there is no such exception (any
	// more), ErrNotRevocable when it is not one the source revokes.
	Revoke(ctx context.Context, ref ExceptionRef) error
}

// ExceptionRef names an exception to revoke.
type ExceptionRef struct {
	Source, Namespace, Name, UID string
}

// ErrExceptionGone: the exception to revoke does not exist (any more).
var ErrExceptionGone = errors.New("the exception does not exist (any more)")

// ErrNotRevocable: the source named does not revoke that exception (a
// policy's own, or one of a source this UI does not read).
var ErrNotRevocable = errors.New("the exception cannot be revoked here")

// expiringWithin is when an exception is highlighted as expiring soon.
const expiringWithin = 7 * 24 * time.Hour

type exceptionRow struct {
	Exception
	// Scope is where it applies, in words.
	Scope    string
	Expiring bool
	Expired  bool
	// In says how far away the expiry is (or was).
	In string
	// Used counts the admissions it was recorded for; Last is the last.
	Used     int
	Last     string
	UsedHref string
	// CanRevoke: the user may revoke it here.
	CanRevoke bool
}

type exceptionsData struct {
	Active, Expired []exceptionRow
	Now             time.Time
	Error           string
	// Hidden counts exceptions in namespaces the user may not list.
	Hidden  int
	Revoked string
	Off     bool
}

// visibleExceptions returns the exceptions the user may list, with their
// use; errors are for the page to show.
func (h *Handler) visibleExceptions(r *http.Request, s *session) ([]exceptionRow, error) {
	rows, _, err := h.exceptionRows(r, s)
	return rows, err
}

// exceptionRows lists the exceptions, and how many it left out because
// the user may not list them.
func (h *Handler) exceptionRows(r *http.Request, s *session) ([]exceptionRow, int, error) {
	ctx, cancel := h.ctx(r)
	defer cancel()
	xs, err := h.c.Exceptions.Exceptions(ctx)
	if err != nil {
		h.c.Log.Error("review: exceptions not listed", "error", err)
		return nil, 0, errors.New("the exceptions could not be listed; try again later")
	}
	now := h.c.Clock.Now()
	var (
		rows    []exceptionRow
		hidden  int
		mu      sync.Mutex
		decided = map[string]bool{} // namespace → may list
	)
	may := func(ns string) (bool, error) {
		mu.Lock()
		ok, seen := decided[ns]
		mu.Unlock()
		if seen {
			return ok, nil
		}
		ok, err := h.allowed(r, s, listExceptions(ns))
		if err != nil {
			return false, &authzError{err}
		}
		mu.Lock()
		decided[ns] = ok
		mu.Unlock()
		return ok, nil
	}
	var names []string
	for _, x := range xs {
		ok, err := may(x.Namespace)
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			hidden++
			continue
		}
		row := exceptionRow{Exception: x, Scope: "namespace " + x.Namespace}
		switch {
		case x.Source == SourcePolicy:
			row.Scope = "every namespace ClusterBuildPolicy " + x.Policy + " governs"
		case x.Namespace == "":
			row.Scope = "every namespace"
		}
		if !x.Expires.IsZero() {
			left := x.Expires.Sub(now)
			row.Expired = left <= 0
			row.Expiring = !row.Expired && left <= expiringWithin
			if row.Expired {
				row.In = duration.HumanDuration(-left) + " ago"
			} else {
				row.In = "in " + duration.HumanDuration(left)
			}
		}
		if x.Revocable && x.Namespace != "" {
			if row.CanRevoke, err = h.allowed(r, s, deleteExceptions(x.Namespace)); err != nil {
				return nil, 0, &authzError{err}
			}
		}
		names = append(names, x.Recorded)
		rows = append(rows, row)
	}
	usage, err := h.c.Store.ExceptionUsage(ctx, names)
	if err != nil {
		h.c.Log.Error("review: exception use not counted", "error", err)
		usage = nil
	}
	for i := range rows {
		u := usage[rows[i].Recorded]
		rows[i].Used = u.Decisions
		if !u.Last.IsZero() {
			rows[i].Last = showTime(u.Last)
		}
		if u.Decisions > 0 {
			rows[i].UsedHref = listLink(everyVerdict("since", "all", "exception", rows[i].Recorded)...)
		}
	}
	slices.SortFunc(rows, func(a, b exceptionRow) int {
		return cmp.Or(a.Expires.Compare(b.Expires), cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	if usage == nil && len(names) > 0 {
		return rows, hidden, errors.New("how often each exception was used could not be counted")
	}
	return rows, hidden, nil
}

func (h *Handler) exceptions(w http.ResponseWriter, r *http.Request, s *session) {
	data := exceptionsData{Now: h.c.Clock.Now()}
	if h.c.Exceptions == nil {
		data.Off = true
		h.render(w, http.StatusOK, "exceptions", s, "Exceptions", data)
		return
	}
	rows, hidden, err := h.exceptionRows(r, s)
	var ae *authzError
	if errors.As(err, &ae) {
		h.authzFailed(w, r, s, ae.err)
		return
	}
	if err != nil {
		data.Error = err.Error()
	}
	data.Hidden = hidden
	for _, row := range rows {
		if row.Expired {
			data.Expired = append(data.Expired, row)
		} else {
			data.Active = append(data.Active, row)
		}
	}
	// Expired: the most recent first.
	slices.Reverse(data.Expired)
	q := r.URL.Query()
	if g := q.Get("revoked"); g != "" && len(g) <= 320 && h.codec.checkGranted(s, revokedSig, g, q.Get("sig")) {
		data.Revoked = g
	}
	h.render(w, http.StatusOK, "exceptions", s, "Exceptions", data)
}

// revokedSig stands for the decision ID in the signature of a
// revocation's confirmation: no decision has it (IDs hold no NUL).
const revokedSig = "\x00revoked"

// authzError is an Authorizer's failure inside exceptionRows.
type authzError struct{ err error }

func (e *authzError) Error() string { return "permissions not checked: " + e.err.Error() }

func (h *Handler) revoke(w http.ResponseWriter, r *http.Request, s *session) {
	if !checkCSRF(r, s) {
		h.fail(w, r, s, http.StatusForbidden, "Refused: the form's token does not match your session. Reload the page and try again.")
		return
	}
	if h.c.Exceptions == nil {
		h.fail(w, r, s, http.StatusForbidden, "Exceptions cannot be revoked here: the review UI does not list them.")
		return
	}
	ref := ExceptionRef{Source: r.PostFormValue("source"), Namespace: r.PostFormValue("namespace"), Name: r.PostFormValue("name"), UID: r.PostFormValue("uid")}
	if (ref.Source != SourceResource && ref.Source != SourceFile) || !namespaceRE.MatchString(ref.Namespace) ||
		ref.Name == "" || len(ref.Name) > 253 || !nameRE.MatchString(ref.Name) || len(ref.UID) > 64 {
		h.fail(w, r, s, http.StatusBadRequest, "The form does not name an exception that can be revoked: a BuildPolicyException or an exception of the exceptions file, by namespace and name.")
		return
	}
	ok, err := h.allowed(r, s, deleteExceptions(ref.Namespace))
	if err != nil {
		h.authzFailed(w, r, s, err)
		return
	}
	if !ok {
		h.c.Log.Warn("review: revocation refused", "user", s.User.Name, "namespace", ref.Namespace, "exception", ref.Name)
		h.fail(w, r, s, http.StatusForbidden, fmt.Sprintf("You (%s) may not delete buildpolicyexceptions in namespace %s.", s.User.Name, ref.Namespace))
		return
	}
	ctx, cancel := h.ctx(r)
	defer cancel()
	err = h.c.Exceptions.Revoke(ctx, ref)
	name := ref.Namespace + "/" + ref.Name
	switch {
	case errors.Is(err, ErrExceptionGone):
		h.fail(w, r, s, http.StatusNotFound, fmt.Sprintf("The exception %s was not revoked: %v.", name, err))
		return
	case errors.Is(err, ErrNotRevocable):
		h.fail(w, r, s, http.StatusBadRequest, fmt.Sprintf("The exception %s was not revoked: %v.", name, err))
		return
	case err != nil:
		h.c.Log.Error("review: exception not revoked", "namespace", ref.Namespace, "exception", ref.Name, "user", s.User.Name, "error", err)
		h.fail(w, r, s, http.StatusBadGateway, "The exception could not be revoked: "+err.Error())
		return
	}
	h.c.Log.Info("review: exception revoked", "namespace", ref.Namespace, "exception", ref.Name, "source", ref.Source, "user", s.User.Name)
	http.Redirect(w, r, "/exceptions?revoked="+url.QueryEscape(name)+"&sig="+h.codec.granted(s, revokedSig, name), http.StatusSeeOther)
}

// exceptionsOfPolicy are a policy's own exceptions, as the page lists
// them: source and policy name them; recorded is how decisions name them
// (policy.Exception.Name, else "exceptions[i]").
func exceptionsOfPolicy(p *policy.Policy, source string) []Exception {
	var out []Exception
	for i, e := range p.Spec().Exceptions {
		x := Exception{Source: source, Policy: p.Name(), Name: e.Name, Recorded: e.Name, Images: e.Images,
			Reason: e.Reason, ApprovedBy: e.ApprovedBy}
		if x.Name == "" {
			x.Name = fmt.Sprintf("exceptions[%d]", i)
			x.Recorded = x.Name
		}
		x.Expires, x.Problem = parseExpires(e.Expires)
		out = append(out, x)
	}
	return out
}

// parseExpires reads an exception's expiry; a problem when it does not
// parse (then the exception does not apply).
func parseExpires(s string) (time.Time, string) {
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(s))
	if err != nil {
		return time.Time{}, fmt.Sprintf("its expiry %q is not RFC 3339, so it does not apply", shorten.Text(s, 40))
	}
	return t, ""
}
