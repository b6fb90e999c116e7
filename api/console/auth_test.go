package console

import (
	"bytes"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// unreached stands in for the backends in tests of login and the routes'
// guards, which must answer before any backend is called: a call panics.
type unreached struct {
	eventlog.Log
	ReadModel
	Auditor
	Engineer
}

func newAuthConsole(t *testing.T, cfg Config) *Console {
	t.Helper()
	var u unreached
	cfg.Log, cfg.ReadModel, cfg.Auditor, cfg.Engineer = u, u, u, u
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
