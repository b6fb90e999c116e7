package main

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// TestConsoleHostileInput: hostile ids, cursors and instants are refused
// with 400 or 404 pages that echo them escaped; none is a 500, none shows
// SQL or a driver's error.
func TestConsoleHostileInput(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	base := startService(t, env("DATABASE_URL", dbURL, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_SEAL_INTERVAL", "0"))
	customer := consoleScenario(t, base, "hostile", 0)
	b := newBrowser(t, base)
	b.login(e2eToken)
	c := "/console/customers/" + customer
	for path, want := range map[string]int{
		"/console/customers/cus_%2F..%2F..%2Fv1":                 http.StatusBadRequest,
		"/console/customers/cus_%E2%80%AEx":                      http.StatusBadRequest,
		"/console/customers/" + strings.Repeat("c", 4000):        http.StatusBadRequest,
		"/console/customers/%3Cscript%3Ealert(1)%3C%2Fscript%3E": http.StatusBadRequest,
		c + "?account=acct_1%26limit%3D1":                        http.StatusBadRequest,
		c + "?account=%3Cb%3E":                                   http.StatusBadRequest,
		c + "?limit=0":                                           http.StatusBadRequest,
		c + "?limit=100000":                                      http.StatusBadRequest,
		c + "?before=x":                                          http.StatusBadRequest,
		c + "?before=-1/0":                                       http.StatusBadRequest,
		c + "?before=18446744073709551615/18446744073709551615":  http.StatusOK, // past the end: the newest page
		c + "?before=9223372036854775808/0":                      http.StatusOK,
		c + "?before=0/0":                                        http.StatusOK,
		c + "/state?at=":                                         http.StatusBadRequest,
		c + "/state?at=%3Cscript%3E":                             http.StatusBadRequest,
		c + "/state?at=99999-01-01T00:00:00Z":                    http.StatusBadRequest,
		c + "/state?at=0001-01-01T00:00:00Z":                     http.StatusOK,
		c + "/state?at=9999-12-31T23:59:59Z":                     http.StatusOK,
		c + "/events/%3Cscript%3Ealert(1)%3C%2Fscript%3E":        http.StatusNotFound,
		c + "/events/" + strings.Repeat("e", 4000):               http.StatusNotFound,
		"/console/?q=" + strings.Repeat("%25_", 2000):            http.StatusOK,
	} {
		resp, page := b.do(http.MethodGet, path, nil)
		if resp.StatusCode != want {
			t.Errorf("GET %.120s: %d, want %d", path, resp.StatusCode, want)
		}
		for _, leak := range []string{"<script>", "SQLSTATE", "pgx", "ERROR:", "SELECT", e2eToken, e2eSecret} {
			if strings.Contains(page, leak) {
				t.Errorf("GET %.120s: the page shows %q", path, leak)
			}
		}
	}
}
