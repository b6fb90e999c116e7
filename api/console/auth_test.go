package console

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// unreached stands in for the backends in tests of login and the routes'
// guards, which must answer before any backend is called: a call panics.
type unreached struct {
	eventlog.Log
	ReadModel
	Auditor
	Engineer
	Revocations
}

func newAuthConsole(t *testing.T, cfg Config) *Console {
	t.Helper()
	var u unreached
	cfg.Log, cfg.ReadModel, cfg.Auditor, cfg.Engineer, cfg.Revocations = u, u, u, u, u
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var loginCSRF = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// loginForm GETs the login page: its CSRF cookie and field.
func loginForm(t *testing.T, c *Console) (*http.Cookie, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/console/login", nil))
	m := loginCSRF.FindStringSubmatch(rec.Body.String())
	if rec.Code != http.StatusOK || m == nil || len(rec.Result().Cookies()) == 0 {
		t.Fatalf("login form: %d\n%s", rec.Code, rec.Body)
	}
	return rec.Result().Cookies()[0], m[1]
}

func postLogin(c *Console, ck *http.Cookie, csrf, token string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/console/login", strings.NewReader(url.Values{"csrf": {csrf}, "token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(ck)
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	return rec
}

// logIn logs in to c with token and returns the session cookie.
func logIn(t *testing.T, c *Console, token string) *http.Cookie {
	t.Helper()
	ck, csrf := loginForm(t, c)
	rec := postLogin(c, ck, csrf, token)
	for _, k := range rec.Result().Cookies() {
		if k.Name == sessionCookie {
			return k
		}
	}
	t.Fatalf("login: %d, no session cookie: %v", rec.Code, rec.Result().Cookies())
	return nil
}

// TestFormBodyLimit: the console reads a small urlencoded form only, before
// any session: a big body is refused with 413 and a multipart one (which
// net/http would spill to temporary files) with 415, unread.
func TestFormBodyLimit(t *testing.T) {
	t.Parallel()
	c := newAuthConsole(t, Config{Token: "secret-token"})
	ck, csrf := loginForm(t, c)

	big := url.Values{"csrf": {csrf}, "token": {strings.Repeat("x", 2<<20)}}.Encode()
	req := httptest.NewRequest(http.MethodPost, "/console/login", strings.NewReader(big))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.AddCookie(ck)
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("a 2 MiB login form: %d, want 413", rec.Code)
	}

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	mw.WriteField("csrf", csrf)
	mw.WriteField("token", "secret-token")
	mw.Close()
	req = httptest.NewRequest(http.MethodPost, "/console/login", &body)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	req.AddCookie(ck)
	rec = httptest.NewRecorder()
	c.ServeHTTP(rec, req)
	if rec.Code != http.StatusUnsupportedMediaType {
		t.Errorf("a multipart login form: %d, want 415", rec.Code)
	}

	// The ordinary form still logs in.
	if rec := postLogin(c, ck, csrf, "secret-token"); rec.Code != http.StatusSeeOther {
		t.Errorf("a good login: %d, want 303", rec.Code)
	}
}

// TestLoginDelayBounded: wrong tokens wait out the delay in a bounded
// number of slots; once they are all taken, a login is refused with 429
// without its token being compared (so a flood learns nothing faster), and
// a right token is not delayed otherwise.
func TestLoginDelayBounded(t *testing.T) {
	t.Parallel()
	c := newAuthConsole(t, Config{Token: "secret-token", LoginDelay: 2 * time.Second})
	ck, csrf := loginForm(t, c)

	start := time.Now()
	if rec := postLogin(c, ck, csrf, "secret-token"); rec.Code != http.StatusSeeOther || time.Since(start) > time.Second {
		t.Fatalf("a good login: %d after %v", rec.Code, time.Since(start))
	}

	var wg sync.WaitGroup
	codes := make(chan int, 2*maxDelayedLogins)
	for range 2 * maxDelayedLogins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			codes <- postLogin(c, ck, csrf, "wrong").Code
		}()
	}
	// While the slots are taken, even the right token is turned away.
	time.Sleep(500 * time.Millisecond)
	if rec := postLogin(c, ck, csrf, "secret-token"); rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" {
		t.Errorf("a login while every slot is taken: %d (Retry-After %q), want 429 with Retry-After", rec.Code, rec.Header().Get("Retry-After"))
	}
	wg.Wait()
	close(codes)
	n := map[int]int{}
	for code := range codes {
		n[code]++
	}
	if n[http.StatusUnauthorized] != maxDelayedLogins || n[http.StatusTooManyRequests] != maxDelayedLogins {
		t.Errorf("%d wrong logins at once: %v, want %d × 401 and %d × 429", 2*maxDelayedLogins, n, maxDelayedLogins, maxDelayedLogins)
	}
	if rec := postLogin(c, ck, csrf, "secret-token"); rec.Code != http.StatusSeeOther {
		t.Errorf("a good login after the flood: %d, want 303", rec.Code)
	}
}

// TestHeadersAndGuards: every response of the console, the login form,
// redirects, error pages and static files included, carries the security
// headers; every route but login and static needs a session; without
// LEDGER_API_TOKEN the console refuses, an empty token included.
func TestHeadersAndGuards(t *testing.T) {
	t.Parallel()
	c := newAuthConsole(t, Config{Token: "secret-token"})
	want := map[string]string{"Content-Security-Policy": contentSecurityPolicy, "X-Content-Type-Options": "nosniff",
		"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
	for path, status := range map[string]int{
		"/console/login":                         http.StatusOK,
		"/console/static/console.css":            http.StatusOK,
		"/console":                               http.StatusMovedPermanently,
		"/console/":                              http.StatusSeeOther,
		"/console/customers/cus_1":               http.StatusSeeOther,
		"/console/customers/cus_1/events.csv":    http.StatusSeeOther,
		"/console/customers/cus_1/events.jsonl":  http.StatusSeeOther,
		"/console/customers/cus_1/events/evt_1":  http.StatusSeeOther,
		"/console/customers/cus_1/state?at=2025": http.StatusSeeOther,
		"/console/projections":                   http.StatusSeeOther,
		"/console/no-such-page":                  http.StatusSeeOther,
	} {
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != status {
			t.Errorf("GET %s: %d, want %d", path, rec.Code, status)
		}
		if status == http.StatusSeeOther && !strings.HasPrefix(rec.Header().Get("Location"), "/console/login?next=") {
			t.Errorf("GET %s: to %q, want the login page", path, rec.Header().Get("Location"))
		}
		for h, v := range want {
			if got := rec.Header().Get(h); got != v {
				t.Errorf("GET %s: %s %q, want %q", path, h, got, v)
			}
		}
	}

	off := newAuthConsole(t, Config{})
	rec := httptest.NewRecorder()
	off.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/console/projections", nil))
	if rec.Code != http.StatusServiceUnavailable {
		t.Errorf("GET /console/projections without LEDGER_API_TOKEN: %d, want 503", rec.Code)
	}
	ck, csrf := loginForm(t, off)
	if rec := postLogin(off, ck, csrf, ""); rec.Code != http.StatusServiceUnavailable || len(rec.Result().Cookies()) > 0 &&
		rec.Result().Cookies()[0].Name == sessionCookie {
		t.Errorf("an empty token without LEDGER_API_TOKEN: %d, cookies %v; want 503 and no session", rec.Code, rec.Result().Cookies())
	}
}

// TestSessionCookieAttributes: the session cookie is HttpOnly,
// SameSite=Strict, scoped to the console, Secure when asked, and lives
// SessionTTL by the console's clock (not the machine's).
func TestSessionCookieAttributes(t *testing.T) {
	t.Parallel()
	now := time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC)
	c := newAuthConsole(t, Config{Token: "secret-token", SecureCookie: true, SessionTTL: time.Hour, Now: func() time.Time { return now }})
	s := logIn(t, c, "secret-token")
	if !s.HttpOnly || !s.Secure || s.SameSite != http.SameSiteStrictMode || s.Path != "/console/" {
		t.Errorf("session cookie %v: want HttpOnly, Secure, SameSite=Strict, Path=/console/", s)
	}
	if s.MaxAge != 3600 || !s.Expires.Equal(now.Add(time.Hour)) {
		t.Errorf("session cookie Max-Age %d, Expires %v: want 3600 and %v", s.MaxAge, s.Expires, now.Add(time.Hour))
	}
}
