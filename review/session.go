package review

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// CookieName is the session cookie. The __Host- prefix makes browsers
// refuse it unless it is Secure, for path /, without a Domain: no other
// host, and no plain-HTTP page, can set it.
const CookieName = "__Host-buildguard-review"

// maxCookieLen bounds an encoded session; browsers keep about 4 KiB per
// cookie, and a user with that many groups is refused at login with a
// clear message rather than silently logged out.
const maxCookieLen = 3800

// MinKeyLen is the shortest session key accepted.
const MinKeyLen = 32

// session is what the cookie carries, signed: who logged in, until when,
// and the token forms must echo (CSRF).
type session struct {
	User    User   `json:"user"`
	ID      string `json:"sid"`
	CSRF    string `json:"csrf"`
	Expires int64  `json:"exp"` // Unix seconds
}

// sessionCodec signs and checks session cookies with HMAC-SHA256.
type sessionCodec struct {
	key []byte
}

// NewKey returns a random session key.
func NewKey() ([]byte, error) {
	k := make([]byte, MinKeyLen)
	if _, err := rand.Read(k); err != nil {
		return nil, err
	}
	return k, nil
}

// randomToken returns 32 bytes of r, base64url-encoded.
func randomToken(r io.Reader) (string, error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(r, b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func newSession(r io.Reader, u User, expires time.Time) (session, error) {
	id, err := randomToken(r)
	if err != nil {
		return session{}, err
	}
	csrf, err := randomToken(r)
	if err != nil {
		return session{}, err
	}
	return session{User: u, ID: id, CSRF: csrf, Expires: expires.Unix()}, nil
}

// errCookieTooLarge is a user whose session does not fit in a cookie.
var errCookieTooLarge = errors.New("the session does not fit in a cookie (too many groups or extra attributes)")

func (c sessionCodec) encode(s session) (string, error) {
	b, err := json.Marshal(s)
	if err != nil {
		return "", err
	}
	payload := base64.RawURLEncoding.EncodeToString(b)
	v := payload + "." + base64.RawURLEncoding.EncodeToString(c.mac(payload))
	if len(v) > maxCookieLen {
		return "", errCookieTooLarge
	}
	return v, nil
}

func (c sessionCodec) mac(payload string) []byte {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte("buildguard-review-session\x00"))
	m.Write([]byte(payload))
	return m.Sum(nil)
}

// granted signs the confirmation that session s granted exception name
// from decision id.
func (c sessionCodec) granted(s *session, id, name string) string {
	m := hmac.New(sha256.New, c.key)
	m.Write([]byte("buildguard-review-granted\x00" + s.ID + "\x00" + id + "\x00" + name))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// checkGranted reports whether sig is granted's signature.
func (c sessionCodec) checkGranted(s *session, id, name, sig string) bool {
	got, err := base64.RawURLEncoding.DecodeString(sig)
	want, _ := base64.RawURLEncoding.DecodeString(c.granted(s, id, name))
	return err == nil && hmac.Equal(got, want)
}

// decode checks v's signature and expiry at now.
func (c sessionCodec) decode(v string, now time.Time) (session, error) {
	if len(v) > maxCookieLen {
		return session{}, errors.New("session cookie too long")
	}
	payload, sig, ok := strings.Cut(v, ".")
	if !ok {
		return session{}, errors.New("session cookie malformed")
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, c.mac(payload)) {
		return session{}, errors.New("session cookie signature invalid")
	}
	b, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return session{}, fmt.Errorf("session cookie payload: %w", err)
	}
	var s session
	if err := json.Unmarshal(b, &s); err != nil {
		return session{}, fmt.Errorf("session cookie payload: %w", err)
	}
	if s.User.Name == "" || s.ID == "" || s.CSRF == "" {
		return session{}, errors.New("session cookie incomplete")
	}
	if !now.Before(time.Unix(s.Expires, 0)) {
		return session{}, errors.New("session expired")
	}
	return s, nil
}

// maxRevoked bounds the sessions ended by logout that are remembered.
const maxRevoked = 100000

// revocations are the sessions ended by logout before they expired: the
// cookie is signed and carries its own expiry, so without this list a
// copy taken before logout would work until then. It is kept in memory,
// so it holds for this process only (not other replicas, not after a
// restart).
type revocations struct {
	mu  sync.Mutex
	ids map[string]time.Time // session ID → its expiry
}

// revoke ends session s until its expiry.
func (r *revocations) revoke(s session, now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ids == nil {
		r.ids = map[string]time.Time{}
	}
	if len(r.ids) >= maxRevoked {
		for id, exp := range r.ids {
			if !now.Before(exp) {
				delete(r.ids, id)
			}
		}
	}
	if len(r.ids) >= maxRevoked {
		// Forget the one that expires first; it is the least useful to
		// a thief.
		first := ""
		for id, exp := range r.ids {
			if first == "" || exp.Before(r.ids[first]) {
				first = id
			}
		}
		delete(r.ids, first)
	}
	r.ids[s.ID] = time.Unix(s.Expires, 0)
}

// revoked reports whether s was ended by logout.
func (r *revocations) revoked(s session) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.ids[s.ID]
	return ok
}
