package console

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
)

// Cookie names.
const (
	sessionCookie = "ledger_console"
	loginCookie   = "ledger_console_login" // the login form's CSRF token, before there is a session
	csrfField     = "csrf"
)

// sessionKeys sign sessions and derive CSRF tokens. They are derived from
// the API token, so every replica accepts the same sessions (DESIGN §7:
// stateless), and changing LEDGER_API_TOKEN ends every session.
type sessionKeys struct {
	session, csrf []byte
}

func newSessionKeys(token string) sessionKeys {
	derive := func(purpose string) []byte {
		m := hmac.New(sha256.New, []byte(token))
		m.Write([]byte("stripe-ledger console " + purpose))
		return m.Sum(nil)
	}
	return sessionKeys{session: derive("session"), csrf: derive("csrf")}
}

func mac(key []byte, parts ...string) string {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(strings.Join(parts, ".")))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func randomToken() string {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b)
}

// session is a logged-in browser: a random id and its expiry, signed.
type session struct {
	id      string
	expires time.Time
}

func (k sessionKeys) encode(s session) string {
	exp := strconv.FormatInt(s.expires.Unix(), 10)
	return s.id + "." + exp + "." + mac(k.session, s.id, exp)
}

func (k sessionKeys) decode(value string, now time.Time) (session, bool) {
	id, rest, ok := strings.Cut(value, ".")
	if !ok {
		return session{}, false
	}
	exp, sig, ok := strings.Cut(rest, ".")
	if !ok || !hmac.Equal([]byte(sig), []byte(mac(k.session, id, exp))) {
		return session{}, false
	}
	unix, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || !now.Before(time.Unix(unix, 0)) {
		return session{}, false
	}
	return session{id: id, expires: time.Unix(unix, 0)}, true
}

// csrfToken is the CSRF token of a session: bound to its id, so a token
// from another session is refused.
func (k sessionKeys) csrfToken(s session) string { return mac(k.csrf, s.id) }

type ctxKey string

const sessionKey ctxKey = "console.session"

func (c *Console) cookie(ec echo.Context, name, value string, expires time.Time) *http.Cookie {
	ck := &http.Cookie{Name: name, Value: value, Path: Prefix + "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: c.cfg.SecureCookie || ec.Request().TLS != nil}
	if expires.IsZero() {
		ck.MaxAge = -1
	} else {
		ck.Expires, ck.MaxAge = expires, int(expires.Sub(c.cfg.Now()).Seconds())
	}
	return ck
}

// requireSession sends requests without a valid session to the login page
// (a POST without one is refused), and refuses a POST whose CSRF token is
// not the session's with 403.
func (c *Console) requireSession(next echo.HandlerFunc) echo.HandlerFunc {
	return func(ec echo.Context) error {
		if c.cfg.Token == "" {
			return &pageError{http.StatusServiceUnavailable, "The console is disabled: set LEDGER_API_TOKEN to enable it."}
		}
		ck, err := ec.Cookie(sessionCookie)
		var s session
		ok := err == nil
		if ok {
			s, ok = c.keys.decode(ck.Value, c.cfg.Now())
		}
		if ok {
			revoked, err := c.cfg.Revocations.Revoked(ec.Request().Context(), s.id)
			if err != nil {
				return fmt.Errorf("console session: %w", err)
			}
			ok = !revoked
		}
		if !ok {
			// A form posted without a session changes nothing; after login the
			// browser goes back to the page the form was on, not to the POST.
			next := ec.Request().URL.RequestURI()
			if ec.Request().Method != http.MethodGet {
				next = path.Dir(ec.Request().URL.Path) + "/"
				if strings.HasPrefix(ec.Path(), Prefix+"/customers/:id/") {
					next = path.Dir(ec.Request().URL.Path)
				}
				if q := ec.Request().URL.RawQuery; q != "" {
					next += "?" + q
				}
			}
			return ec.Redirect(http.StatusSeeOther, Prefix+"/login?next="+url.QueryEscape(next))
		}
		if ec.Request().Method == http.MethodPost && !c.validCSRF(ec, c.keys.csrfToken(s)) {
			return &pageError{http.StatusForbidden, "This form is missing its CSRF token or carries a wrong one; reload the page and try again."}
		}
		ec.Set(string(sessionKey), s)
		return next(ec)
	}
}

func (c *Console) validCSRF(ec echo.Context, want string) bool {
	got := ec.FormValue(csrfField)
	return got != "" && subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// safeNext is where a login goes on to: a console path, never elsewhere.
func safeNext(next string) string {
	if strings.HasPrefix(next, Prefix+"/") && !strings.HasPrefix(next, "//") && !strings.ContainsAny(next, "\\\r\n") {
		return next
	}
	return Prefix + "/"
}

func (c *Console) handleLoginForm(ec echo.Context) error {
	return c.loginForm(ec, http.StatusOK, "")
}

func (c *Console) loginForm(ec echo.Context, status int, message string) error {
	token := randomToken()
	ec.SetCookie(c.cookie(ec, loginCookie, token, c.cfg.Now().Add(time.Hour)))
	return c.render(ec, status, "login", map[string]any{
		"Title": "Log in", "Error": message, "CSRF": token, "Next": safeNext(ec.FormValue("next")),
		"Disabled": c.cfg.Token == "",
	})
}

func (c *Console) handleLogin(ec echo.Context) error {
	ck, err := ec.Cookie(loginCookie)
	if err != nil || !c.validCSRF(ec, ck.Value) {
		return &pageError{http.StatusForbidden, "This form is missing its CSRF token or carries a wrong one; reload the login page and try again."}
	}
	if c.cfg.Token == "" {
		return c.loginForm(ec, http.StatusServiceUnavailable, "The console is disabled: set LEDGER_API_TOKEN to enable it.")
	}
	// A wrong token waits LoginDelay in one of maxDelayedLogins slots; with
	// none free, the attempt is refused before its token is compared, so no
	// flood of guesses learns faster than maxDelayedLogins per LoginDelay nor
	// holds more than that many goroutines.
	select {
	case c.delayed <- struct{}{}:
	default:
		ec.Response().Header().Set("Retry-After", strconv.Itoa(int(c.cfg.LoginDelay.Seconds())+1))
		return c.loginForm(ec, http.StatusTooManyRequests, "Too many wrong tokens were tried just now; try again in a moment.")
	}
	if subtle.ConstantTimeCompare([]byte(ec.FormValue("token")), []byte(c.cfg.Token)) != 1 {
		defer func() { <-c.delayed }()
		t := time.NewTimer(c.cfg.LoginDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ec.Request().Context().Done():
			return ec.Request().Context().Err()
		}
		return c.loginForm(ec, http.StatusUnauthorized, "That token is not the ledger's API token.")
	}
	<-c.delayed
	s := session{id: randomToken(), expires: c.cfg.Now().Add(c.cfg.SessionTTL).Truncate(time.Second)}
	ec.SetCookie(c.cookie(ec, sessionCookie, c.keys.encode(s), s.expires))
	ec.SetCookie(c.cookie(ec, loginCookie, "", time.Time{}))
	return ec.Redirect(http.StatusSeeOther, safeNext(ec.FormValue("next")))
}

// handleLogout revokes the session, so that a copy of its cookie is
// refused too, then clears the browser's.
func (c *Console) handleLogout(ec echo.Context) error {
	s := ec.Get(string(sessionKey)).(session)
	if err := c.cfg.Revocations.Revoke(ec.Request().Context(), s.id, s.expires); err != nil {
		return fmt.Errorf("console logout: %w", err)
	}
	ec.SetCookie(c.cookie(ec, sessionCookie, "", time.Time{}))
	return ec.Redirect(http.StatusSeeOther, Prefix+"/login")
}
