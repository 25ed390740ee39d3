package review

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// scope is what decisions a user may read: those of every namespace, or
// of some.
type scope struct {
	all bool
	// namespaces are those the user may list, when not all: never nil
	// then, empty when none.
	namespaces []string
	// truncated: more namespaces had decisions than were asked about.
	truncated bool
}

// Bounds of a scope: the namespaces asked about, and how many
// SubjectAccessReviews are in flight at once for one page.
const (
	maxScopeNamespaces = 1000
	scopeWorkers       = 8
)

// filterScope returns what decisions since the user may read, given the
// namespace a page filters on ("" for none); a namespace the user may
// not list is refused with 403. On failure it has answered and returns
// false.
func (h *Handler) filterScope(w http.ResponseWriter, r *http.Request, s *session, namespace string, since time.Time) (scope, bool) {
	all, err := h.allowed(r, s, listDecisions(""))
	if err != nil {
		h.authzFailed(w, r, s, err)
		return scope{}, false
	}
	if all {
		return scope{all: true}, true
	}
	if namespace != "" {
		ok, err := h.allowed(r, s, listDecisions(namespace))
		if err != nil {
			h.authzFailed(w, r, s, err)
			return scope{}, false
		}
		if !ok {
			h.fail(w, r, s, http.StatusForbidden, fmt.Sprintf("You (%s) may not list decisions in namespace %s.", s.User.Name, namespace))
			return scope{}, false
		}
		return scope{all: true}, true
	}
	ctx, cancel := h.ctx(r)
	nss, err := h.c.Store.DecisionNamespaces(ctx, since)
	cancel()
	if err != nil {
		h.c.Log.Error("review: namespaces not listed", "error", err)
		h.fail(w, r, s, http.StatusServiceUnavailable, "The decision store did not answer; try again later.")
		return scope{}, false
	}
	sc := scope{namespaces: []string{}}
	if len(nss) > maxScopeNamespaces {
		nss, sc.truncated = nss[:maxScopeNamespaces], true
	}
	may := make([]bool, len(nss))
	errs := make([]error, len(nss))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(scopeWorkers, len(nss)) {
		wg.Go(func() {
			for i := range work {
				may[i], errs[i] = h.allowed(r, s, listDecisions(nss[i]))
			}
		})
	}
	for i := range nss {
		work <- i
	}
	close(work)
	wg.Wait()
	for i, ns := range nss {
		if errs[i] != nil {
			h.authzFailed(w, r, s, errs[i])
			return scope{}, false
		}
		if may[i] {
			sc.namespaces = append(sc.namespaces, ns)
		}
	}
	return sc, true
}
