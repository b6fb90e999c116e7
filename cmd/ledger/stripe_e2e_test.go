package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi/stripefake"
	"github.com/stripe-ledger/stripe-ledger/internal/stripeapi/stripemock"
)

const stripeKey = "sk_test_4eC39HqLyjWDarjtT1zdp7dc"

// ledgerCmd runs the command line as main does and returns its stdout, its
// stderr and its exit code.
func ledgerCmd(t *testing.T, getenv func(string) string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, getenv, &out, &errOut)
	if err != nil {
		fmt.Fprintln(&errOut, "ledger:", err)
	}
	return out.String(), errOut.String(), exitCode(err)
}

// stripeEnv is the environment of a ledger on database url that reads Stripe at base.
func stripeEnv(url, base string, more ...string) func(string) string {
	return env(append([]string{"DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_PLANS", domaintest.Plans, "STRIPE_API_KEY", stripeKey, "STRIPE_API_BASE", base}, more...)...)
}

func migrated(t *testing.T) string {
	t.Helper()
	url := pgtest.NewDatabase(t)
	if _, stderr, code := ledgerCmd(t, env("DATABASE_URL", url), "migrate"); code != 0 {
		t.Fatalf("migrate: %s", stderr)
	}
	return url
}

func countRows(t *testing.T, url, sql string, args ...any) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A ledger started empty is filled by backfill; the read model is the fold
// of Stripe's events; a webhook delivery of a backfilled event is a
// duplicate (one row); verify passes, counting the backfilled records as
// unsigned by design; a second backfill appends nothing.
func TestBackfillFillsAnEmptyLedger(t *testing.T) {
	t.Parallel()
	// Backfill reads the platform's events only: leave the generated Connect lives out.
	deliveries := slices.DeleteFunc(domaintest.Lifecycles(rand.New(rand.NewPCG(13, 1)), 6),
		func(d domaintest.Delivery) bool { return d.Account != "" })
	api := stripefake.New(t, stripeKey)
	var payloads [][]byte
	for _, d := range deliveries {
		api.AddEvent(d.Payload)
		payloads = append(payloads, d.Payload)
	}
	url := migrated(t)
	getenv := stripeEnv(url, api.URL)
	out, stderr, code := ledgerCmd(t, getenv, "backfill", "--since", "100000h")
	want := fmt.Sprintf("%d seen, %d appended, 0 already stored", len(deliveries), len(deliveries))
	if code != 0 || !strings.Contains(out, want) {
		t.Fatalf("backfill exit %d: %s%s; want %q", code, out, stderr, want)
	}
	if n := countRows(t, url, `SELECT count(*) FROM events WHERE source = 'backfill' AND signature = ''`); n != len(deliveries) {
		t.Fatalf("%d unsigned backfill rows, want %d", n, len(deliveries))
	}

	base := startService(t, getenv)
	waitCaughtUp(t, base)
	requireReadModel(t, base, payloads, mustPlans(t, domaintest.Plans))

	again := deliveries[len(deliveries)/2]
	status, body := postWebhook(t, base, again.Payload)
	if status != http.StatusOK || !strings.Contains(string(body), `"duplicate":true`) {
		t.Fatalf("webhook of a backfilled event: %d %s, want a duplicate", status, body)
	}
	if n := countRows(t, url, `SELECT count(*) FROM events WHERE event_id = $1 AND source = 'backfill'`, again.EventID); n != 1 {
		t.Fatalf("%d rows for %s, want the one backfilled", n, again.EventID)
	}

	out, stderr, code = ledgerCmd(t, getenv, "verify")
	if code != 0 || !strings.Contains(out, fmt.Sprintf("%d record(s) fetched from Stripe's API", len(deliveries))) {
		t.Fatalf("verify exit %d: %s%s", code, out, stderr)
	}

	out, _, code = ledgerCmd(t, getenv, "backfill", "--since", "100000h")
	if want := fmt.Sprintf("%d seen, 0 appended, %d already stored", len(deliveries), len(deliveries)); code != 0 || !strings.Contains(out, want) {
		t.Fatalf("second backfill exit %d: %s; want %q", code, out, want)
	}
}

func fakeEvents(api *stripefake.API, n int) {
	for i := range n {
		api.AddEvent(fmt.Appendf(nil, `{"id":"evt_bf%05d","object":"event","api_version":"2023-10-16","created":%d,"type":"customer.updated",`+
			`"data":{"object":{"id":"cus_bf%03d","object":"customer","email":"c%d@example.com"}}}`, i, time.Now().Unix()-int64(n-i), i%50, i))
	}
}

// A backfill that fails half-way (Stripe refuses a page and says not to
// retry) resumes from its saved cursor: the second run lists only the pages
// left and the log holds every event once.
func TestBackfillInterruptedAndResumed(t *testing.T) {
	t.Parallel()
	api := stripefake.New(t, stripeKey)
	fakeEvents(api, 350)
	api.Inject(stripefake.Fault{Path: "/v1/events", After: 2, Count: 1, Status: http.StatusServiceUnavailable,
		Header: http.Header{"Stripe-Should-Retry": {"false"}}})
	url := migrated(t)
	getenv := stripeEnv(url, api.URL)

	out, _, code := ledgerCmd(t, getenv, "backfill")
	if code != exitFailed || !strings.Contains(out, "200 seen, 200 appended") || !strings.Contains(out, "run the same command again to resume") {
		t.Fatalf("interrupted backfill exit %d: %s", code, out)
	}
	requests := api.Requests("/v1/events")
	out, _, code = ledgerCmd(t, getenv, "backfill")
	if code != 0 || !strings.Contains(out, "resumed") || !strings.Contains(out, "350 seen, 350 appended, 0 already stored") {
		t.Fatalf("resumed backfill exit %d: %s", code, out)
	}
	if n := api.Requests("/v1/events") - requests; n != 2 {
		t.Fatalf("the resumed run made %d list requests, want 2 (the pages after the cursor)", n)
	}
	if n := countRows(t, url, `SELECT count(DISTINCT event_id) FROM events`); n != 350 {
		t.Fatalf("%d events stored, want 350", n)
	}
}

// Stripe's 429 is waited out as its Retry-After says, then the backfill goes on.
func TestBackfillBacksOffOn429(t *testing.T) {
	t.Parallel()
	api := stripefake.New(t, stripeKey)
	fakeEvents(api, 150)
	api.Inject(stripefake.Fault{Path: "/v1/events", After: 1, Count: 2, Status: http.StatusTooManyRequests,
		Header: http.Header{"Retry-After": {"1"}}})
	url := migrated(t)
	start := time.Now()
	out, stderr, code := ledgerCmd(t, stripeEnv(url, api.URL), "backfill")
	if code != 0 || !strings.Contains(out, "150 seen, 150 appended") {
		t.Fatalf("backfill exit %d: %s%s", code, out, stderr)
	}
	if took := time.Since(start); took < 2*time.Second || api.Requests("/v1/events") != 4 {
		t.Fatalf("took %s with %d list requests; want two retries after 1 s each (4 requests)", took, api.Requests("/v1/events"))
	}
	if !strings.Contains(stderr, "retrying") || strings.Contains(stderr, stripeKey) {
		t.Fatalf("the retries are not logged, or the key is: %s", stderr)
	}
}

const (
	cancelCustomer = `{"id":"cus_missed","object":"customer","email":"m@example.com","name":"Missed"}`
	activeSub      = `{"id":"sub_missed","object":"subscription","customer":"cus_missed","status":"active","cancel_at_period_end":false,
 "canceled_at":null,"ended_at":null,"trial_end":null,"current_period_start":1767225600,"current_period_end":1769904000,
 "items":{"object":"list","data":[{"quantity":1,"price":{"id":"price_pro_monthly","lookup_key":null,"product":"prod_pro"}}]}}`
)

func webhookEvent(id, typ string, created int64, object string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"object":"event","api_version":"2023-10-16","created":%d,"type":%q,"data":{"object":%s}}`, id, created, typ, object)
}

// The ledger missed a cancellation (customer.subscription.deleted never
// arrived). reconcile --dry-run names the subscription and the field and
// appends nothing; reconcile repairs it; afterwards the read model is
// Stripe's state, a second reconcile finds no drift, and a rebuild from the
// log gives the same read model (projections diff finds no change).
func TestReconcileRepairsAMissedCancellation(t *testing.T) {
	t.Parallel()
	api, url, getenv, base, created := ledgerHolding(t, activeSub)
	canceled := strings.NewReplacer(`"status":"active"`, `"status":"canceled"`,
		`"canceled_at":null,"ended_at":null`, fmt.Sprintf(`"canceled_at":%d,"ended_at":%d`, created+60, created+60)).Replace(activeSub)
	api.Put("", []byte(cancelCustomer))
	api.Put("", []byte(canceled))

	out, _, code := ledgerCmd(t, getenv, "reconcile", "--dry-run")
	if code != exitProblem || !regexpLine(out, `subscription\s+sub_missed\s+cus_missed\s+status\s+active\s+canceled`) ||
		!strings.Contains(out, "nothing appended") {
		t.Fatalf("reconcile --dry-run exit %d:\n%s", code, out)
	}
	if n := countRows(t, url, `SELECT count(*) FROM events WHERE source = 'reconcile'`); n != 0 {
		t.Fatalf("--dry-run appended %d events", n)
	}

	out, _, code = ledgerCmd(t, getenv, "reconcile", "--format", "json")
	var rep struct {
		Drift    []struct{ Object, ID, Field, Ledger, Stripe string }
		Appended int
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != exitProblem || rep.Appended != 1 {
		t.Fatalf("reconcile exit %d, %v:\n%s", code, err, out)
	}
	fields := map[string]bool{}
	for _, d := range rep.Drift {
		if d.Object == "subscription" && d.ID == "sub_missed" {
			fields[d.Field] = true
		}
	}
	if !fields["status"] || !fields["canceled_at"] || !fields["deleted"] {
		t.Fatalf("drift %+v, want status, canceled_at and deleted of sub_missed", rep.Drift)
	}
	if n := countRows(t, url, `SELECT count(*) FROM events WHERE source = 'reconcile' AND type = 'ledger.observed.subscription'
	   AND stream = 'customer-cus_missed' AND signature = ''`); n != 1 {
		t.Fatalf("%d observed subscription snapshots in the customer's stream, want 1", n)
	}

	waitCaughtUp(t, base)
	var cust customerView
	if getV1(t, base+"/v1/customers/cus_missed", &cust); cust.Entitled || len(cust.Subscriptions) != 1 || cust.Subscriptions[0].Status != "canceled" {
		t.Fatalf("after reconcile: %+v, want the subscription canceled and no entitlement", cust)
	}
	if out, _, code := ledgerCmd(t, getenv, "reconcile"); code != 0 || !strings.Contains(out, "0 drifting field(s)") {
		t.Fatalf("second reconcile exit %d:\n%s", code, out)
	}
	if out, stderr, code := ledgerCmd(t, getenv, "projections", "diff"); code != 0 {
		t.Fatalf("a rebuild from the log differs from the live read model (exit %d):\n%s%s", code, out, stderr)
	}
	if out, stderr, code := ledgerCmd(t, getenv, "verify"); code != 0 {
		t.Fatalf("verify exit %d: %s%s", code, out, stderr)
	}
}

// Stripe moved the subscription to paying by invoice and the ledger missed
// the update: reconcile names collection_method, repairs it with the
// observed snapshot, and a second reconcile finds no drift.
func TestReconcileRepairsAMissedCollectionMethod(t *testing.T) {
	t.Parallel()
	automatic := strings.Replace(activeSub, `"status":"active"`, `"status":"active","collection_method":"charge_automatically"`, 1)
	api, _, getenv, base, _ := ledgerHolding(t, automatic)
	api.Put("", []byte(cancelCustomer))
	api.Put("", []byte(strings.Replace(automatic, "charge_automatically", "send_invoice", 1)))
	out, _, code := ledgerCmd(t, getenv, "reconcile")
	if code != exitProblem || !regexpLine(out, `subscription\s+sub_missed\s+cus_missed\s+collection_method\s+charge_automatically\s+send_invoice`) {
		t.Fatalf("reconcile exit %d:\n%s", code, out)
	}
	waitCaughtUp(t, base)
	if out, _, code := ledgerCmd(t, getenv, "reconcile"); code != 0 || !strings.Contains(out, "0 drifting field(s)") {
		t.Fatalf("second reconcile exit %d:\n%s", code, out)
	}
}

// ledgerHolding starts a ledger, on a fake Stripe, that holds cus_missed
// (cancelCustomer) and sub, both created an hour ago (created) and projected.
func ledgerHolding(t *testing.T, sub string) (api *stripefake.API, url string, getenv func(string) string, base string, created int64) {
	t.Helper()
	api = stripefake.New(t, stripeKey)
	url = migrated(t)
	getenv = stripeEnv(url, api.URL)
	base = startService(t, getenv)
	created = time.Now().Add(-time.Hour).Unix()
	deliver(t, base, webhookEvent("evt_missed_1", "customer.created", created, cancelCustomer))
	deliver(t, base, webhookEvent("evt_missed_2", "customer.subscription.created", created, sub))
	waitCaughtUp(t, base)
	return api, url, getenv, base, created
}

func regexpLine(out, pattern string) bool {
	for _, line := range strings.Split(out, "\n") {
		if matched, _ := regexp.MatchString(pattern, line); matched {
			return true
		}
	}
	return false
}

// thinNotification is a v2 event notification for a v1 event sent thin.
func thinNotification(id, typ, snapshot, relatedType, relatedID string) []byte {
	return fmt.Appendf(nil, `{"id":%q,"object":"v2.core.event","type":%q,"livemode":false,"created":%q,"snapshot_event":%q,`+
		`"related_object":{"id":%q,"type":%q,"url":"/v1/%ss/%s"}}`,
		id, typ, time.Now().UTC().Format(time.RFC3339Nano), snapshot, relatedID, relatedType, relatedType, relatedID)
}

func pendingGauge(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, "ledger_thin_events_pending "); ok {
			return v
		}
	}
	return "absent"
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// A thin event is stored as received and answered 200; serve's fetcher
// fetches the snapshot event it names (or, without one, the related object)
// and the projection applies it.
func TestThinEventFetchedAndProjected(t *testing.T) {
	t.Parallel()
	api := stripefake.New(t, stripeKey)
	created := time.Now().Add(-time.Minute).Unix()
	api.AddEvent(webhookEvent("evt_thin_full", "customer.subscription.created", created, activeSub))
	api.Put("", []byte(cancelCustomer))
	url := migrated(t)
	base := startService(t, stripeEnv(url, api.URL))

	deliver(t, base, thinNotification("evt_thin_1", "customer.subscription.created", "evt_thin_full", "subscription", "sub_missed"))
	// No snapshot event: the related object is fetched and stored as observed.
	deliver(t, base, thinNotification("evt_thin_2", "customer.updated", "", "customer", "cus_missed"))
	waitFor(t, "both thin events fetched", func() bool {
		return countRows(t, url, `SELECT count(*) FROM thin_events WHERE fetched_at IS NOT NULL AND fetched_event_id <> ''`) == 2
	})
	waitCaughtUp(t, base)
	var cust customerView
	if status := getV1(t, base+"/v1/customers/cus_missed", &cust); status != http.StatusOK || !cust.Entitled || cust.Plan != "pro" {
		t.Fatalf("customer after the thin events: %d %+v, want entitled to pro", status, cust)
	}
	if n := countRows(t, url, `SELECT count(*) FROM events WHERE source = 'thin' AND signature <> ''`); n != 2 {
		t.Fatalf("%d signed thin notifications stored, want 2", n)
	}
	if n := countRows(t, url, `SELECT count(*) FROM events WHERE source = 'thin' AND signature = ''
	   AND (event_id = 'evt_thin_full' OR type = 'ledger.observed.customer')`); n != 2 {
		t.Fatalf("%d fetched records, want the snapshot event and the observed customer", n)
	}
	if v := pendingGauge(t, base); v != "0" {
		t.Fatalf("ledger_thin_events_pending %s, want 0", v)
	}
	if out, stderr, code := ledgerCmd(t, stripeEnv(url, api.URL), "verify"); code != 0 {
		t.Fatalf("verify exit %d: %s%s", code, out, stderr)
	}
}

// Without STRIPE_API_KEY a thin event is stored, answered 200 and counted as
// pending; the next backfill (with a key) fetches it.
func TestThinEventWithoutKeyFetchedLater(t *testing.T) {
	t.Parallel()
	api := stripefake.New(t, stripeKey)
	// Older than the backfill's window: only the thin event's fetch brings it in.
	api.AddEvent(webhookEvent("evt_late_full", "customer.subscription.created", time.Now().Add(-48*time.Hour).Unix(), activeSub))
	url := migrated(t)
	base := startService(t, env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken,
		"LEDGER_PLANS", domaintest.Plans))
	deliver(t, base, thinNotification("evt_late_thin", "customer.subscription.created", "evt_late_full", "subscription", "sub_missed"))
	if v := pendingGauge(t, base); v != "1" {
		t.Fatalf("ledger_thin_events_pending %s, want 1", v)
	}
	out, stderr, code := ledgerCmd(t, stripeEnv(url, api.URL), "backfill", "--since", "1h")
	if code != 0 || !strings.Contains(out, "0 seen") || !strings.Contains(out, "thin events: 1 fetched (1 appended)") {
		t.Fatalf("backfill exit %d: %s%s", code, out, stderr)
	}
	if v := pendingGauge(t, base); v != "0" {
		t.Fatalf("ledger_thin_events_pending %s after the backfill, want 0", v)
	}
	requireSubscriptionStatus(t, base, "sub_missed", "active")
}

// requireSubscriptionStatus waits for the projection, then requires the
// subscription's status in the read API.
func requireSubscriptionStatus(t *testing.T, base, id, want string) {
	t.Helper()
	waitCaughtUp(t, base)
	var sub struct{ Status string }
	if status := getV1(t, base+"/v1/subscriptions/"+id, &sub); status != http.StatusOK || sub.Status != want {
		t.Fatalf("subscription %s: %d %+v, want status %s", id, status, sub, want)
	}
}

// Stripe's "event generation failure resolved" makes serve reconcile at once.
func TestEventGenerationFailureTriggersReconcile(t *testing.T) {
	t.Parallel()
	api := stripefake.New(t, stripeKey)
	api.Put("", []byte(cancelCustomer))
	api.Put("", []byte(activeSub))
	url := migrated(t)
	base := startService(t, stripeEnv(url, api.URL))
	deliver(t, base, fmt.Appendf(nil, `{"id":"evt_health_1","object":"v2.core.event","type":%q,"created":%q,"livemode":false}`,
		"v2.core.health.event_generation_failure.resolved", time.Now().UTC().Format(time.RFC3339)))
	waitFor(t, "the reconcile's observed snapshots", func() bool {
		return countRows(t, url, `SELECT count(*) FROM events WHERE source = 'reconcile'`) == 2
	})
	requireSubscriptionStatus(t, base, "sub_missed", "active")
}

// Against stripe-mock (Stripe's OpenAPI spec, which rejects parameters it
// does not define): the commands' requests are ones Stripe accepts, and its
// fixtures' shapes are read.
func TestStripeCommandsAgainstStripeMock(t *testing.T) {
	t.Parallel()
	base := stripemock.Start(t)
	url := migrated(t)
	getenv := stripeEnv(url, base)
	out, stderr, code := ledgerCmd(t, getenv, "backfill", "--types", "invoice.paid,customer.subscription.deleted")
	if code != 0 || !strings.Contains(out, "1 seen, 1 appended") {
		t.Fatalf("backfill against stripe-mock exit %d: %s%s", code, out, stderr)
	}
	// stripe-mock's fixtures are not in the ledger: each is drift ("exists").
	out, stderr, code = ledgerCmd(t, getenv, "reconcile", "--format", "json")
	var rep struct {
		Customers, Subscriptions, Invoices, Appended int
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != exitProblem ||
		rep.Customers == 0 || rep.Subscriptions == 0 || rep.Invoices == 0 || rep.Appended == 0 {
		t.Fatalf("reconcile against stripe-mock exit %d, %v: %s%s", code, err, out, stderr)
	}
	out, stderr, code = ledgerCmd(t, getenv, "reconcile", "--customer", "cus_123", "--account", "acct_123", "--dry-run")
	if code == exitFailed {
		t.Fatalf("reconcile --customer against stripe-mock exit %d: %s%s", code, out, stderr)
	}
}
