package console

import (
	"strings"
	"testing"
	"time"
)

// TestSessionCookie: a session decodes until it expires, under the key of
// the token that signed it only, and any edit of its value is refused; the
// CSRF token is the session's own.
func TestSessionCookie(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	keys, other := newSessionKeys("token-a"), newSessionKeys("token-b")
	s := session{id: randomToken(), expires: now.Add(time.Hour)}
	value := keys.encode(s)
	if got, ok := keys.decode(value, now); !ok || got.id != s.id {
		t.Fatalf("decode(encode(s)) = %v, %v", got, ok)
	}
	if _, ok := keys.decode(value, now.Add(time.Hour)); ok {
		t.Error("a session is accepted at its expiry")
	}
	if _, ok := other.decode(value, now); ok {
		t.Error("a session signed under another API token is accepted")
	}
	id, rest, _ := strings.Cut(value, ".")
	exp, sig, _ := strings.Cut(rest, ".")
	for name, v := range map[string]string{
		"later expiry": id + "." + "9999999999" + "." + sig,
		"other id":     randomToken() + "." + exp + "." + sig,
		"no signature": id + "." + exp + ".",
		"garbage":      "x",
	} {
		if _, ok := keys.decode(v, now); ok {
			t.Errorf("%s: accepted", name)
		}
	}
	s2 := session{id: randomToken(), expires: s.expires}
	if keys.csrfToken(s) == keys.csrfToken(s2) {
		t.Error("two sessions share a CSRF token")
	}
	if keys.csrfToken(s) == other.csrfToken(s) {
		t.Error("a session's CSRF token does not depend on the API token")
	}
}

func TestSafeNext(t *testing.T) {
	t.Parallel()
	for next, want := range map[string]string{
		"/console/customers/cus_1?account=acct_1": "/console/customers/cus_1?account=acct_1",
		"https://evil.example/":                   "/console/",
		"//evil.example/console/":                 "/console/",
		"/console/\\evil":                         "/console/",
		"/v1/customers/cus_1":                     "/console/",
		"":                                        "/console/",
	} {
		if got := safeNext(next); got != want {
			t.Errorf("safeNext(%q) = %q, want %q", next, got, want)
		}
	}
}
