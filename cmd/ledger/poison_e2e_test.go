package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// poisonPayload renders a validly signed-to-be event for a poison customer
// of its own: its envelope is fine, the values inside are what a read model
// cannot hold.
func poisonPayload(id, typ, object string) []byte {
	return []byte(`{"id":"` + id + `","object":"event","api_version":"2023-10-16","created":1709251200,"type":"` + typ +
		`","data":{"object":` + object + `}}`)
}

// TestPoisonEndToEnd: a shuffled corpus with issue #10's poison events mixed
// in, through the real server and runner: every delivery is stored, every
// other customer's read model is exactly the pure fold of the clean corpus,
// /readyz answers 200 "degraded" with the dead-letter count, the gauge says
// the same, `ledger projections dead-letters` lists exactly the poison
// events, and `ledger projections retry --all` records them again (exit 1).
func TestPoisonEndToEnd(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	getenv := env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken, "LEDGER_PLANS", domaintest.Plans)
	base := startService(t, getenv)

	long := strings.Repeat("x", 10_000)
	sub := func(customer, status, price string, start, end int64) string {
		return fmt.Sprintf(`{"id":"sub_%s","object":"subscription","customer":"%s","status":"%s","current_period_start":%d,`+
			`"current_period_end":%d,"items":{"data":[{"quantity":1,"price":{"id":"%s","product":"prod_x"}}]}}`,
			customer, customer, status, start, end, price)
	}
	const start, end = 1709251200, 1711929600
	dead := map[string][]byte{
		"evt_poison_long": poisonPayload("evt_poison_long", "invoice.paid",
			`{"id":"in_poison","object":"invoice","customer":"cus_poison_long","status":"paid","subscription":"sub_`+long+`"}`),
		"evt_poison_far":  poisonPayload("evt_poison_far", "customer.subscription.updated", sub("cus_poison_far", "active", "price_x", start, 1e13)),
		"evt_poison_past": poisonPayload("evt_poison_past", "customer.subscription.updated", sub("cus_poison_past", "active", "price_x", -1e12, end)),
		"evt_poison_shape": poisonPayload("evt_poison_shape", "invoice.paid",
			`{"id":"in_shape","object":"invoice","customer":"cus_poison_shape","status":"paid","amount_due":"a lot"}`),
	}
	cleaned := [][]byte{
		poisonPayload("evt_poison_nul_sub", "customer.subscription.updated", sub("cus_poison_nul", `active\u0000`, `price_\u0000x`, start, end)),
		poisonPayload("evt_poison_nul_name", "customer.updated", `{"id":"cus_poison_nul","object":"customer","name":"A\u0000B"}`),
	}

	rng := rand.New(rand.NewPCG(10, 17))
	inOrder := domaintest.Lifecycles(rng, 8)
	clean := make([][]byte, len(inOrder))
	for i, d := range inOrder {
		clean[i] = d.Payload
	}
	var deliveries [][]byte
	for _, d := range domaintest.Redeliver(rng, inOrder) {
		deliveries = append(deliveries, d.Payload)
	}
	for _, p := range append(slices.Collect(maps.Values(dead)), cleaned...) {
		deliveries = slices.Insert(deliveries, rng.IntN(len(deliveries)+1), p)
	}
	for _, p := range deliveries {
		deliver(t, base, p)
	}
	waitCaughtUp(t, base)

	plans, _ := domain.ParsePlans(domaintest.Plans)
	requireBothKinds(t, requireReadModel(t, base, clean, plans))
	var nul customerView
	if status := getV1(t, base+"/v1/customers/cus_poison_nul", &nul); status != http.StatusOK ||
		len(nul.Subscriptions) != 1 || nul.Subscriptions[0].Status != "active" {
		t.Errorf("customer with NUL in its fields: %d %+v, want its subscription applied, status cleaned to active", status, nul)
	}

	var ready struct {
		Status      string `json:"status"`
		DeadLetters int64  `json:"dead_letters"`
		Projections []struct {
			DeadLetters int64 `json:"dead_letters"`
		} `json:"projections"`
	}
	resp, err := http.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	_ = json.NewDecoder(resp.Body).Decode(&ready)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || ready.Status != "degraded" || ready.DeadLetters != int64(len(dead)) ||
		len(ready.Projections) != 1 || ready.Projections[0].DeadLetters != int64(len(dead)) {
		t.Errorf("/readyz: %d %+v, want 200 degraded with %d dead letters", resp.StatusCode, ready, len(dead))
	}
	resp, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if want := fmt.Sprintf(`ledger_projection_dead_letters{projection="billing"} %d`, len(dead)); !bytes.Contains(metrics, []byte(want)) {
		t.Errorf("/metrics lacks %s", want)
	}

	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"projections", "dead-letters", "--format", "json"}, getenv, &out, &errOut); err != nil {
		t.Fatalf("dead-letters: %v\n%s", err, errOut.String())
	}
	var letters []struct {
		EventID   string `json:"event_id"`
		EventType string `json:"event_type"`
		Error     string `json:"error"`
	}
	if err := json.Unmarshal(out.Bytes(), &letters); err != nil {
		t.Fatalf("dead-letters --format json: %v\n%s", err, out.String())
	}
	var ids []string
	for _, l := range letters {
		ids = append(ids, l.EventID)
		if l.Error == "" || l.EventType == "" {
			t.Errorf("dead letter %+v lacks its type or reason", l)
		}
	}
	slices.Sort(ids)
	if want := slices.Sorted(maps.Keys(dead)); !slices.Equal(ids, want) {
		t.Errorf("dead-letters lists %v, want exactly %v", ids, want)
	}
	out.Reset()
	if err := run(context.Background(), []string{"projections", "dead-letters"}, getenv, &out, &errOut); err != nil ||
		strings.Count(out.String(), "\nbilling ") != len(dead) {
		t.Errorf("dead-letters (text): %v\n%s", err, out.String())
	}
	out.Reset()
	err = run(context.Background(), []string{"projections", "retry", "--all"}, getenv, &out, &errOut)
	if exitCode(err) != 1 || strings.Count(out.String(), "dead-lettered again") != len(dead) {
		t.Errorf("retry --all: %v (exit %d)\n%s; want all %d dead-lettered again, exit 1", err, exitCode(err), out.String(), len(dead))
	}
}

// TestSlowBodiesAreCut: clients that send their headers and then trickle
// the body are cut off by the server's read timeout instead of holding
// their connections open for as long as they like.
func TestSlowBodiesAreCut(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	base := startService(t, env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_HTTP_READ_TIMEOUT", "1s"))
	const clients, trickle = 20, 10 * time.Second
	begin := time.Now()
	var wg sync.WaitGroup
	cut := make(chan time.Duration, clients)
	for range clients {
		c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
		wg.Go(func() { // the trickle: one byte every 100 ms
			for time.Since(begin) < trickle {
				if _, err := c.Write([]byte(" ")); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
		wg.Go(func() { // the server answers or closes: either way it stopped waiting
			_ = c.SetReadDeadline(begin.Add(trickle + 5*time.Second))
			_, _ = c.Read(make([]byte, 1))
			cut <- time.Since(begin)
		})
	}
	wg.Wait()
	close(cut)
	for d := range cut {
		if d > 5*time.Second {
			t.Fatalf("a trickling client was served for %v; want it cut within 5 s of a 1 s read timeout", d.Round(time.Millisecond))
		}
	}
}

// TestHTTPLimitsConfig: the defaults cut a slow body within 30 s, and the
// variables are read and checked.
func TestHTTPLimitsConfig(t *testing.T) {
	t.Parallel()
	cfg, err := LoadConfig(env())
	if err != nil || cfg.HTTPReadTimeout <= 0 || cfg.HTTPReadTimeout > 30*time.Second || cfg.HTTPIdleTimeout <= 0 {
		t.Fatalf("defaults %+v (%v): want a read timeout within 30 s and an idle timeout", cfg, err)
	}
	cfg, err = LoadConfig(env("LEDGER_HTTP_READ_TIMEOUT", "5s", "LEDGER_HTTP_IDLE_TIMEOUT", "1m", "LEDGER_WEBHOOK_MAX_INFLIGHT", "7"))
	if err != nil || cfg.HTTPReadTimeout != 5*time.Second || cfg.HTTPIdleTimeout != time.Minute || cfg.MaxInflightWebhooks != 7 {
		t.Fatalf("configured: %+v (%v)", cfg, err)
	}
	for _, kv := range [][2]string{{"LEDGER_HTTP_READ_TIMEOUT", "soon"}, {"LEDGER_HTTP_IDLE_TIMEOUT", "-1s"}, {"LEDGER_WEBHOOK_MAX_INFLIGHT", "0"}} {
		if _, err := LoadConfig(env(kv[0], kv[1])); err == nil || !strings.Contains(err.Error(), kv[0]) {
			t.Errorf("%s=%s: err = %v, want a refusal naming it", kv[0], kv[1], err)
		}
	}
}
