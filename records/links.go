package records

import (
	"fmt"
	"net/url"
	"strings"
)

// maxReviewURL bounds a review URL, so that an Event's message (at most
// maxEventMessage) keeps room for the link and for what it says.
const maxReviewURL = 100

// ReviewURL is where the review UI (docs/review.md) is reached, such as
// https://buildguard.example: a decision's page is its /decisions/ID. The
// zero value links nothing.
type ReviewURL struct{ base string }

// ParseReviewURL checks s: an absolute http or https URL without a query,
// a fragment or credentials, of at most 100 characters; a path is kept
// (a UI behind a proxy's prefix). "" is the zero ReviewURL.
func ParseReviewURL(s string) (ReviewURL, error) {
	if s == "" {
		return ReviewURL{}, nil
	}
	if len(s) > maxReviewURL {
		return ReviewURL{}, fmt.Errorf("%q: longer than %d characters (an Event's message must hold it)", s[:maxReviewURL]+"…", maxReviewURL)
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return ReviewURL{}, fmt.Errorf("%q: %v", s, err)
	case u.Scheme != "https" && u.Scheme != "http", u.Host == "":
		return ReviewURL{}, fmt.Errorf("%q: want an absolute https:// URL", s)
	case u.User != nil, u.RawQuery != "", u.ForceQuery, u.Fragment != "", u.Opaque != "":
		return ReviewURL{}, fmt.Errorf("%q: want no credentials, query or fragment", s)
	}
	return ReviewURL{base: strings.TrimRight(u.Scheme+"://"+u.Host+u.EscapedPath(), "/")}, nil
}

// IsZero reports whether u links nothing.
func (u ReviewURL) IsZero() bool { return u.base == "" }

// String is the URL, "" for the zero value.
func (u ReviewURL) String() string { return u.base }

// Decision is the URL of the page of the decision id; "" for the zero
// value. The ID is one path segment: the slash of an audit scan's record
// ID is escaped.
func (u ReviewURL) Decision(id string) string {
	if u.base == "" || id == "" {
		return ""
	}
	return u.base + "/decisions/" + url.PathEscape(id)
}
