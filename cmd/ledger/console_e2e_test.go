package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi/stripefake"
)

// hostileName is a customer name a Stripe payload may carry; the console
// must show it as text.
const hostileName = `</script><script>alert("x")</script><img src=x onerror=alert(1)>`

// consoleScenario delivers a customer with a subscription (created, then
// updated with previous_attributes), a charge and a dispute that names only
// the charge, and returns the customer's id.
func consoleScenario(t *testing.T, base, tag string, extra int) string {
	t.Helper()
	customer := "cus_console_" + tag
	event := func(id, typ string, created int64, object map[string]any, prev map[string]any) []byte {
		data := map[string]any{"object": object}
		if prev != nil {
			data["previous_attributes"] = prev
		}
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false) // the payload carries "</script>" as Stripe would send it
		_ = enc.Encode(map[string]any{"id": id, "object": "event", "api_version": "2023-10-16", "created": created,
			"type": typ, "data": data})
		return b.Bytes()
	}
	const t0 = 1_750_000_000
	sub := func(status string, periodEnd int64) map[string]any {
		return map[string]any{"id": "sub_" + tag, "object": "subscription", "customer": customer, "status": status,
			"current_period_start": t0, "current_period_end": periodEnd, "cancel_at_period_end": false,
			"items": map[string]any{"object": "list", "data": []any{map[string]any{"id": "si_" + tag, "quantity": 1,
				"price": map[string]any{"id": "price_pro", "lookup_key": "pro", "product": "prod_pro"}}}}}
	}
	payloads := [][]byte{
		event("evt_cu_"+tag, "customer.created", t0, map[string]any{"id": customer, "object": "customer",
			"email": tag + "@example.com", "name": hostileName}, nil),
		event("evt_s1_"+tag, "customer.subscription.created", t0+10, sub("incomplete", t0+2_592_000), nil),
		event("evt_s2_"+tag, "customer.subscription.updated", t0+20, sub("active", t0+2_592_000), map[string]any{"status": "incomplete"}),
		event("evt_ch_"+tag, "charge.succeeded", t0+30, map[string]any{"id": "ch_" + tag, "object": "charge",
			"customer": customer, "payment_intent": "pi_" + tag, "amount": 5000, "currency": "usd"}, nil),
		event("evt_dp_"+tag, "charge.dispute.created", t0+40, map[string]any{"id": "dp_" + tag, "object": "dispute",
			"charge": "ch_" + tag, "amount": 5000, "currency": "usd", "status": "needs_response"}, nil),
	}
	for i := range extra { // customer.updated snapshots, for pagination (no previous_attributes: the diff is computed)
		payloads = append(payloads, event(fmt.Sprintf("evt_up%03d_%s", i, tag), "customer.updated", t0+100+int64(i),
			map[string]any{"id": customer, "object": "customer", "email": fmt.Sprintf("%s+%d@example.com", tag, i), "name": hostileName}, nil))
	}
	for _, p := range payloads {
		deliver(t, base, p)
	}
	waitCaughtUp(t, base)
	return customer
}

// browser is an HTTP client with a cookie jar that does not follow redirects.
type browser struct {
	t    testing.TB
	base string
	c    *http.Client
}

func newBrowser(t testing.TB, base string) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, base: base, c: &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}}
}

func (b *browser) do(method, path string, form url.Values) (*http.Response, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, _ := http.NewRequest(method, b.base+path, body)
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	return resp, string(text)
}

var csrfInput = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func csrfOf(t testing.TB, page string) string {
	t.Helper()
	m := csrfInput.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the page:\n%s", page)
	}
	return m[1]
}

func (b *browser) login(token string) *http.Response {
	b.t.Helper()
	_, form := b.do(http.MethodGet, "/console/login?next=/console/projections", nil)
	resp, _ := b.do(http.MethodPost, "/console/login", url.Values{"csrf": {csrfOf(b.t, form)}, "token": {token}, "next": {"/console/projections"}})
	return resp
}

// TestConsole drives the console through the served ledger as a browser
// without JavaScript would: login, CSRF, the auditor's pages, verify before
// and after tampering.
func TestConsole(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	base := startService(t, env("DATABASE_URL", dbURL, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_SEAL_INTERVAL", "0"))
	customer := consoleScenario(t, base, "go", 0)
	b := newBrowser(t, base)

	// Unauthenticated: every page goes to the login page, a POST is refused.
	for _, path := range []string{"/console/", "/console/customers/" + customer, "/console/projections", "/console/reconcile",
		"/console/customers/" + customer + "/state?at=2025-06-15T00:00:00Z"} {
		resp, _ := b.do(http.MethodGet, path, nil)
		if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || !strings.HasPrefix(loc, "/console/login?next=") {
			t.Errorf("GET %s unauthenticated: %d to %q, want 303 to the login page", path, resp.StatusCode, loc)
		}
	}
	if resp, _ := b.do(http.MethodPost, "/console/customers/"+customer+"/verify", url.Values{}); resp.StatusCode != http.StatusSeeOther ||
		resp.Header.Get("Location") != "/console/login?next="+url.QueryEscape("/console/customers/"+customer) {
		t.Errorf("POST verify unauthenticated: %d to %q, want 303 to the login page, then the customer's", resp.StatusCode, resp.Header.Get("Location"))
	}

	// Login: without its CSRF token 403, a wrong token the form again, the right one a session.
	if resp, _ := b.do(http.MethodPost, "/console/login", url.Values{"token": {e2eToken}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("login without CSRF: %d, want 403", resp.StatusCode)
	}
	_, form := b.do(http.MethodGet, "/console/login", nil)
	resp, page := b.do(http.MethodPost, "/console/login", url.Values{"csrf": {csrfOf(t, form)}, "token": {"wrong"}})
	if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(page, "not the ledger&#39;s API token") || !strings.Contains(page, `name="token"`) {
		t.Errorf("wrong token: %d, want 401 and the form with an error:\n%s", resp.StatusCode, page)
	}
	resp = b.login(e2eToken)
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusSeeOther || loc != "/console/projections" {
		t.Fatalf("login: %d to %q, want 303 to next", resp.StatusCode, loc)
	}
	var session *http.Cookie
	for _, ck := range resp.Cookies() {
		if ck.Name == "ledger_console" && ck.Value != "" {
			session = ck
		}
	}
	if session == nil || !session.HttpOnly || session.SameSite != http.SameSiteStrictMode || session.Secure || session.MaxAge <= 0 {
		t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP, with an expiry", session)
	}

	// Find by email goes straight to the customer; the page escapes the hostile name and lists the dispute.
	resp, _ = b.do(http.MethodGet, "/console/?q="+url.QueryEscape("GO@example.com"), nil)
	if loc := resp.Header.Get("Location"); loc != "/console/customers/"+customer {
		t.Errorf("find by email: %d to %q", resp.StatusCode, loc)
	}
	resp, page = b.do(http.MethodGet, "/console/customers/"+customer, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("customer page: %d\n%s", resp.StatusCode, page)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	for _, want := range []string{"charge.dispute.created", "object-dispute-dp_go", "needs_response", "customer.subscription.updated",
		"sig-valid", "webhook", "Verify this customer", "events.csv", "events.jsonl", `<html lang="en">`} {
		if !strings.Contains(page, want) {
			t.Errorf("customer page lacks %q", want)
		}
	}
	if strings.Contains(page, "<script>alert") || strings.Contains(page, "onerror=alert") && !strings.Contains(page, "&lt;img") {
		t.Errorf("customer page renders the hostile name as markup")
	}

	// The event page: Stripe's previous_attributes as the diff; the payload escaped.
	resp, page = b.do(http.MethodGet, "/console/customers/"+customer+"/events/evt_s2_go", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, "previous_attributes") ||
		!regexp.MustCompile(`(?s)<td class="mono">status</td><td class="mono old">&#34;incomplete&#34;</td><td class="mono new">&#34;active&#34;</td>`).MatchString(page) {
		t.Errorf("event page: %d, want status incomplete → active from previous_attributes:\n%s", resp.StatusCode, page)
	}
	resp, page = b.do(http.MethodGet, "/console/customers/"+customer+"/events/evt_cu_go", nil)
	if resp.StatusCode != http.StatusOK || strings.Contains(page, "</script><script>") || !strings.Contains(page, "&lt;/script&gt;") {
		t.Errorf("event page of the hostile payload: %d, want it escaped", resp.StatusCode)
	}

	// State at an instant between the two subscription snapshots.
	_, page = b.do(http.MethodGet, "/console/customers/"+customer+"/state?at=2025-06-15T15:06:55Z", nil)
	if !strings.Contains(page, "s-incomplete") || strings.Contains(page, "s-active") {
		t.Errorf("state at t0+15: want the subscription incomplete:\n%s", page)
	}

	// Verify: 403 without the CSRF token, PASS with it, FAIL after tampering.
	if resp, _ := b.do(http.MethodPost, "/console/customers/"+customer+"/verify", url.Values{}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("verify without CSRF: %d, want 403", resp.StatusCode)
	}
	_, page = b.do(http.MethodGet, "/console/customers/"+customer, nil)
	csrf := csrfOf(t, page)
	if _, page = b.do(http.MethodPost, "/console/customers/"+customer+"/verify", url.Values{"csrf": {csrf}}); !strings.Contains(page, "PASS") ||
		!strings.Contains(page, "No seal has been written yet") {
		t.Errorf("verify: want PASS, saying that without a seal a removed tail would go unnoticed:\n%s", page)
	}
	if resp, page := b.do(http.MethodPost, "/console/customers/cus_never_seen/verify", url.Values{"csrf": {csrf}}); resp.StatusCode != http.StatusNotFound ||
		!strings.Contains(page, "nothing to verify") {
		t.Errorf("verify of a customer the ledger never saw: %d, want 404 saying there is nothing to verify:\n%s", resp.StatusCode, page)
	}
	tamper(t, dbURL, "evt_ch_go")
	if _, page = b.do(http.MethodPost, "/console/customers/"+customer+"/verify", url.Values{"csrf": {csrf}}); !strings.Contains(page, "FAIL") ||
		!strings.Contains(page, "evt_ch_go") {
		t.Errorf("verify after tampering: want FAIL naming evt_ch_go:\n%s", page)
	}

	// Engineers: projections with a dead letter and its error, its retry
	// (it fails again: nothing was fixed), the diff as a table; logout ends the session.
	deliver(t, base, poisonPayload("evt_poison_console", "invoice.paid",
		`{"id":"in_poison_console","object":"invoice","customer":"`+customer+`","status":"paid","amount_due":"a lot"}`))
	waitCaughtUp(t, base)
	if resp, page = b.do(http.MethodGet, "/console/projections", nil); resp.StatusCode != http.StatusOK || !strings.Contains(page, "billing") ||
		!strings.Contains(page, "evt_poison_console") || !strings.Contains(page, `aria-label="Retry evt_poison_console"`) {
		t.Errorf("projections: %d, want billing and the dead letter with a retry button\n%s", resp.StatusCode, page)
	}
	if resp, page = b.do(http.MethodPost, "/console/projections/retry", url.Values{"csrf": {csrf}, "event_id": {"evt_poison_console"}}); resp.StatusCode != http.StatusOK ||
		!strings.Contains(page, "0 applied, 1 failed again") {
		t.Errorf("retry: %d, want 1 failed again\n%s", resp.StatusCode, page)
	}
	if resp, _ = b.do(http.MethodPost, "/console/projections/retry", url.Values{"csrf": {csrf}, "event_id": {"evt_not_dead"}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("retry of an event that is no dead letter: %d, want 404", resp.StatusCode)
	}
	if resp, _ = b.do(http.MethodPost, "/console/projections/retry", url.Values{"event_id": {"evt_poison_console"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("retry without CSRF: %d, want 403", resp.StatusCode)
	}
	if _, page = b.do(http.MethodPost, "/console/projections/diff", url.Values{"csrf": {csrf}}); !strings.Contains(page, `id="diff-result"`) {
		t.Errorf("diff: no result:\n%s", page)
	}
	if resp, page = b.do(http.MethodGet, "/console/reconcile?customer="+customer, nil); resp.StatusCode != http.StatusOK ||
		!strings.Contains(page, `id="reconcile-off"`) || !strings.Contains(page, "STRIPE_API_KEY") {
		t.Errorf("reconcile without STRIPE_API_KEY: %d, want the page saying it is not configured\n%s", resp.StatusCode, page)
	}
	consoleURL, _ := url.Parse(base + "/console/")
	copied := b.c.Jar.Cookies(consoleURL) // the session cookie, as someone who copied it holds it
	if resp, _ = b.do(http.MethodPost, "/console/logout", url.Values{"csrf": {csrf}}); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("logout: %d", resp.StatusCode)
	}
	if resp, _ = b.do(http.MethodGet, "/console/", nil); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("after logout: %d, want 303 to the login page", resp.StatusCode)
	}
	// Logout revokes the session itself, not only the browser's cookie.
	replay := newBrowser(t, base)
	replay.c.Jar.SetCookies(consoleURL, copied)
	if resp, _ = replay.do(http.MethodGet, "/console/", nil); resp.StatusCode != http.StatusSeeOther || len(copied) == 0 {
		t.Errorf("a copy of the session cookie (%d cookies) after logout: %d, want 303 to the login page", len(copied), resp.StatusCode)
	}
}

// tamper changes one byte of an event's stored payload behind the log's
// back, as a DBA could (the append-only trigger does not fire for replicas).
func tamper(t *testing.T, dbURL, eventID string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `UPDATE events SET payload = replace(convert_from(payload, 'UTF8'), '5000', '9000')::bytea WHERE event_id = $1`, eventID); err != nil {
		t.Fatal(err)
	}
}

// TestConsoleInChromium runs api/console/testdata/browser/console.test.mjs
// (playwright-core driving Debian's Chromium) against a served ledger with
// signed events posted: login, CSRF, the timeline of a customer with a
// dispute, pagination, an event's diff, state at an instant, verify before
// and after tampering, keyboard navigation, phone width, a basic
// accessibility check, and a screenshot of each main page into
// LEDGER_CONSOLE_SCREENSHOTS (default: the test's artifact directory).
// .ci/run installs Chromium and playwright-core; without them the test fails
// under CI=true and is skipped elsewhere, saying what to install.
func TestConsoleInChromium(t *testing.T) {
	t.Parallel()
	chromium := cmp.Or(os.Getenv("LEDGER_TEST_CHROMIUM"), "/usr/bin/chromium")
	dir, err := filepath.Abs("../../api/console/testdata/browser")
	if err != nil {
		t.Fatal(err)
	}
	node, nodeErr := exec.LookPath("node")
	_, chromiumErr := os.Stat(chromium)
	_, pwErr := os.Stat(filepath.Join(dir, "node_modules", "playwright-core"))
	if missing := errors.Join(nodeErr, chromiumErr, pwErr); missing != nil {
		const how = "apt-get install -y chromium nodejs npm; (cd api/console/testdata/browser && npm ci)"
		if os.Getenv("CI") == "true" {
			t.Fatalf("browser tests need node, Chromium and playwright-core (%s): %v", how, missing)
		}
		t.Skipf("browser tests need node, Chromium and playwright-core (%s): %v", how, missing)
	}
	shots := os.Getenv("LEDGER_CONSOLE_SCREENSHOTS")
	if shots == "" {
		shots = t.ArtifactDir()
	}
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}

	dbURL := pgtest.NewDatabase(t)
	base := startService(t, env("DATABASE_URL", dbURL, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_SEAL_INTERVAL", "0"))
	customer := consoleScenario(t, base, "browser", 55)
	deliver(t, base, poisonPayload("evt_poison_browser", "invoice.paid",
		`{"id":"in_poison_browser","object":"invoice","customer":"`+customer+`","status":"paid","amount_due":"a lot"}`))
	waitCaughtUp(t, base)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "console.test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "BASE_URL="+base, "TOKEN="+e2eToken, "CUSTOMER="+customer, "SHOTS="+shots, "CHROMIUM="+chromium)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	asks := bufio.NewScanner(stdout)
	for asks.Scan() {
		switch asks.Text() {
		case "tamper":
			tamper(t, dbURL, "evt_ch_browser")
			fmt.Fprintln(stdin, "ok")
		default:
			fmt.Fprintln(stdin, "unknown request")
		}
	}
	stdin.Close()
	err = cmd.Wait()
	t.Logf("browser checks:\n%s", stderr.String())
	if err != nil {
		t.Fatalf("browser tests failed: %v", err)
	}
	t.Logf("screenshots in %s", shots)
}

// TestConsoleVerifyRemovedRecords: once seals cover the log, the console's
// verify fails for a customer whose stream lost its tail, and for one whose
// linked dispute's stream was removed, and still passes for the others.
func TestConsoleVerifyRemovedRecords(t *testing.T) {
	t.Parallel()
	dbURL := pgtest.NewDatabase(t)
	base := startService(t, env("DATABASE_URL", dbURL, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_SEAL_INTERVAL", "100ms"))
	customers := map[string]string{}
	for _, tag := range []string{"clean", "tail", "linked"} {
		customers[tag] = consoleScenario(t, base, tag, 0)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var unsealed int64
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM (SELECT stream, max(stream_version) v FROM events GROUP BY stream) e
  WHERE NOT EXISTS (SELECT 1 FROM seal_heads h WHERE h.stream = e.stream AND h.stream_version = e.v)`).Scan(&unsealed); err != nil {
			t.Fatal(err)
		}
		if unsealed == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 20s %d stream head(s) are not sealed", unsealed)
		}
	}
	b := newBrowser(t, base)
	b.login(e2eToken)
	verify := func(tag string) string {
		_, page := b.do(http.MethodGet, "/console/customers/"+customers[tag], nil)
		_, page = b.do(http.MethodPost, "/console/customers/"+customers[tag]+"/verify", url.Values{"csrf": {csrfOf(t, page)}})
		return page
	}
	for tag := range customers {
		if page := verify(tag); !strings.Contains(page, "PASS") || strings.Contains(page, `id="no-seal"`) {
			t.Fatalf("verify %s before any removal: want PASS with seals:\n%s", tag, page)
		}
	}
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		t.Fatal(err)
	}
	// The tail of cus_console_tail's own stream (its charge), and the whole stream of cus_console_linked's dispute.
	for _, id := range []string{"evt_ch_tail", "evt_dp_linked"} {
		if tag, err := conn.Exec(ctx, `DELETE FROM events WHERE event_id = $1`, id); err != nil || tag.RowsAffected() != 1 {
			t.Fatalf("delete %s: %v, %v", id, tag, err)
		}
	}
	for tag, want := range map[string]string{"clean": "PASS", "tail": "FAIL", "linked": "FAIL"} {
		if page := verify(tag); !strings.Contains(page, want) {
			t.Errorf("verify %s after the removals: want %s:\n%s", tag, want, page)
		}
	}
}

// billingSchema is the schema of the billing projection's live version as
// the projections page shows it.
var billingSchema = regexp.MustCompile(`id="schema-billing">([^<]+)<`)

// TestConsoleRebuildAndReconcile: the projections page rebuilds billing
// blue/green (CSRF required, refused while another build holds the lock,
// then a new schema swapped in that still serves the customer), and the
// reconcile page shows, without appending, the drift of a customer whose
// cancellation the ledger missed, against the Stripe fake.
func TestConsoleRebuildAndReconcile(t *testing.T) {
	t.Parallel()
	api := stripefake.New(t, stripeKey)
	dbURL := pgtest.NewDatabase(t)
	base := startService(t, stripeEnv(dbURL, api.URL, "LEDGER_SEAL_INTERVAL", "0"))
	created := time.Now().Add(-time.Hour).Unix()
	deliver(t, base, webhookEvent("evt_missed_1", "customer.created", created, cancelCustomer))
	deliver(t, base, webhookEvent("evt_missed_2", "customer.subscription.created", created, activeSub))
	waitCaughtUp(t, base)
	b := newBrowser(t, base)
	for _, req := range []struct{ method, path string }{{http.MethodGet, "/console/reconcile?customer=cus_missed"},
		{http.MethodPost, "/console/projections/rebuild"}} {
		var form url.Values
		if req.method == http.MethodPost {
			form = url.Values{"projection": {"billing"}}
		}
		if resp, _ := b.do(req.method, req.path, form); resp.StatusCode != http.StatusSeeOther ||
			!strings.HasPrefix(resp.Header.Get("Location"), "/console/login?next=") {
			t.Errorf("%s %s unauthenticated: %d to %q, want 303 to the login page", req.method, req.path, resp.StatusCode, resp.Header.Get("Location"))
		}
	}
	b.login(e2eToken)

	_, page := b.do(http.MethodGet, "/console/projections", nil)
	before := billingSchema.FindStringSubmatch(page)
	if before == nil || !strings.Contains(page, `aria-label="Rebuild billing"`) {
		t.Fatalf("projections page: want billing's schema and a rebuild button:\n%s", page)
	}
	csrf := csrfOf(t, page)
	if resp, _ := b.do(http.MethodPost, "/console/projections/rebuild", url.Values{"projection": {"billing"}}); resp.StatusCode != http.StatusForbidden {
		t.Errorf("rebuild without CSRF: %d, want 403", resp.StatusCode)
	}
	if resp, _ := b.do(http.MethodPost, "/console/projections/rebuild", url.Values{"csrf": {csrf}, "projection": {"nope"}}); resp.StatusCode != http.StatusNotFound {
		t.Errorf("rebuild of an unknown projection: %d, want 404", resp.StatusCode)
	}

	// Another build (here: the test, as another replica's rebuild would) holds
	// the projection's build lock, projections.buildLockClass 'LPBD' and the name.
	ctx := context.Background()
	holder, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock(x'4c504244'::int, hashtext('billing'))`); err != nil {
		t.Fatal(err)
	}
	resp, page := b.do(http.MethodPost, "/console/projections/rebuild", url.Values{"csrf": {csrf}, "projection": {"billing"}})
	if resp.StatusCode != http.StatusConflict || !strings.Contains(page, "Refused: another build of billing") ||
		!strings.Contains(page, "another build of this projection is in progress") {
		t.Errorf("rebuild while another build holds the lock: %d, want 409 saying so\n%s", resp.StatusCode, page)
	}
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_unlock(x'4c504244'::int, hashtext('billing'))`); err != nil {
		t.Fatal(err)
	}

	resp, page = b.do(http.MethodPost, "/console/projections/rebuild", url.Values{"csrf": {csrf}, "projection": {"billing"}})
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted || !strings.Contains(page, `id="rebuild-billing"`) {
		t.Fatalf("rebuild: %d, want 200 or 202 and its state\n%s", resp.StatusCode, page)
	}
	waitFor(t, "the console's rebuild to finish", func() bool {
		_, page = b.do(http.MethodGet, "/console/projections", nil)
		return !strings.Contains(page, "running. Reload")
	})
	after := billingSchema.FindStringSubmatch(page)
	if !strings.Contains(page, "the rebuilt version is live") || after == nil || after[1] == before[1] {
		t.Fatalf("after the rebuild: want it finished and a new live schema (was %s):\n%s", before[1], page)
	}
	var cust customerView
	if getV1(t, base+"/v1/customers/cus_missed", &cust); !cust.Entitled || len(cust.Subscriptions) != 1 || cust.Subscriptions[0].Status != "active" {
		t.Errorf("the rebuilt read model serves %+v, want the active subscription", cust)
	}

	// Stripe says the subscription was canceled; the ledger missed it.
	canceled := strings.NewReplacer(`"status":"active"`, `"status":"canceled"`,
		`"canceled_at":null,"ended_at":null`, fmt.Sprintf(`"canceled_at":%d,"ended_at":%d`, created+60, created+60)).Replace(activeSub)
	api.Put("", []byte(cancelCustomer))
	api.Put("", []byte(canceled))
	if resp, page = b.do(http.MethodGet, "/console/reconcile", nil); resp.StatusCode != http.StatusOK || !strings.Contains(page, `name="customer"`) ||
		strings.Contains(page, "reconcile-off") {
		t.Errorf("reconcile form: %d\n%s", resp.StatusCode, page)
	}
	if resp, _ = b.do(http.MethodGet, "/console/reconcile?customer="+url.QueryEscape("cus_<x>"), nil); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("reconcile of a malformed id: %d, want 400", resp.StatusCode)
	}
	resp, page = b.do(http.MethodGet, "/console/reconcile?customer=cus_missed", nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `id="reconcile-result"`) ||
		!regexp.MustCompile(`<td>subscription</td><td class="mono">sub_missed</td><td class="mono">status</td><td class="mono old">active</td><td class="mono new">canceled</td>`).MatchString(page) {
		t.Errorf("reconcile: %d, want the drift table with sub_missed's status active → canceled\n%s", resp.StatusCode, page)
	}
	if resp, page = b.do(http.MethodGet, "/console/reconcile?customer=cus_nobody", nil); resp.StatusCode != http.StatusNotFound ||
		!strings.Contains(page, "Stripe has no customer cus_nobody in the platform account") {
		t.Errorf("reconcile of a customer Stripe does not have: %d, want 404 saying so\n%s", resp.StatusCode, page)
	}
	if n := countRows(t, dbURL, `SELECT count(*) FROM events WHERE source = 'reconcile'`); n != 0 {
		t.Errorf("the console's dry-run reconcile appended %d events", n)
	}
}
