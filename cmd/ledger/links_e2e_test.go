package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

// linkedEvent is one delivery of the links scenario: which event, which
// stream the log must file it under.
type linkedEvent struct {
	id, stream string
	created    int64
	payload    []byte
}

// chargeScenario is a customer's charge (succeeded, then refunded), with a
// refund and a dispute that, like Stripe's, name only the charge.
func chargeScenario(tag string) (charge1, charge2, refund, dispute linkedEvent, customer, disputeID string) {
	customer, charge, disputeID, refundID := "cus_"+tag, "ch_"+tag, "dp_"+tag, "re_"+tag
	event := func(id, typ string, created int64, object map[string]any) []byte {
		b, _ := json.Marshal(map[string]any{"id": id, "object": "event", "api_version": "2023-10-16", "created": created,
			"type": typ, "data": map[string]any{"object": object}})
		return b
	}
	const t0 = 1_750_000_000
	charge1 = linkedEvent{id: "evt_c1_" + tag, stream: "customer-" + customer, created: t0}
	charge1.payload = event(charge1.id, "charge.succeeded", t0, map[string]any{"id": charge, "object": "charge",
		"customer": customer, "payment_intent": "pi_" + tag, "amount": 5000, "amount_refunded": 0, "currency": "usd"})
	dispute = linkedEvent{id: "evt_dp_" + tag, stream: "object-dispute-" + disputeID, created: t0 + 100}
	dispute.payload = event(dispute.id, "charge.dispute.created", t0+100, map[string]any{"id": disputeID, "object": "dispute",
		"charge": charge, "payment_intent": "pi_" + tag, "amount": 5000, "currency": "usd", "status": "needs_response"})
	refund = linkedEvent{id: "evt_re_" + tag, stream: "object-refund-" + refundID, created: t0 + 200}
	refund.payload = event(refund.id, "refund.created", t0+200, map[string]any{"id": refundID, "object": "refund",
		"charge": charge, "amount": 1000, "currency": "usd", "status": "succeeded"})
	charge2 = linkedEvent{id: "evt_c2_" + tag, stream: "customer-" + customer, created: t0 + 300}
	charge2.payload = event(charge2.id, "charge.refunded", t0+300, map[string]any{"id": charge, "object": "charge",
		"customer": customer, "amount": 5000, "amount_refunded": 1000, "refunded": false, "currency": "usd"})
	return charge1, charge2, refund, dispute, customer, disputeID
}

// TestLinkedDisputesAndRefundsInCustomerHistory delivers a dispute and a
// refund before, between and after their charge's events, and expects the
// customer's history (JSON pages, CSV, ledger history, state?at=) to hold
// them in log order, each naming its stream, and readmodel.disputes to name
// the customer, whichever came first.
func TestLinkedDisputesAndRefundsInCustomerHistory(t *testing.T) {
	t.Parallel()
	url := pgtest.NewDatabase(t)
	base := startService(t, env("DATABASE_URL", url, "STRIPE_WEBHOOK_SECRET", e2eSecret, "LEDGER_API_TOKEN", e2eToken))
	orders := map[string]func(c1, c2, re, dp linkedEvent) []linkedEvent{
		"before":  func(c1, c2, re, dp linkedEvent) []linkedEvent { return []linkedEvent{dp, re, c1, c2} },
		"between": func(c1, c2, re, dp linkedEvent) []linkedEvent { return []linkedEvent{c1, re, dp, c2} },
		"after":   func(c1, c2, re, dp linkedEvent) []linkedEvent { return []linkedEvent{c1, c2, dp, re} },
		"mixed":   func(c1, c2, re, dp linkedEvent) []linkedEvent { return []linkedEvent{re, c2, dp, c1} },
	}
	type delivered struct {
		customer, dispute string
		order             []linkedEvent
	}
	var all []delivered
	for name, order := range orders {
		c1, c2, re, dp, customer, dispute := chargeScenario(fmt.Sprintf("%s_%d", name, time.Now().UnixNano()))
		d := delivered{customer: customer, dispute: dispute, order: order(c1, c2, re, dp)}
		for _, e := range d.order {
			deliver(t, base, e.payload)
		}
		all = append(all, d)
	}
	waitCaughtUp(t, base)
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	for i, d := range all {
		name := fmt.Sprintf("order %d (%s)", i, strings.Join(ids(d.order), " "))
		var wantIDs, wantStreams []string
		for _, e := range d.order {
			wantIDs, wantStreams = append(wantIDs, e.id), append(wantStreams, e.stream)
		}

		var customerID string
		if err := conn.QueryRow(context.Background(), `SELECT customer_id FROM readmodel.disputes WHERE dispute_id = $1`, d.dispute).Scan(&customerID); err != nil || customerID != d.customer {
			t.Errorf("%s: readmodel.disputes names customer %q (%v), want %s", name, customerID, err, d.customer)
		}

		// JSON pages of one event each: the merged history in log order.
		var gotIDs, gotStreams []string
		for after, n := "", 0; n < 10; n++ {
			var page struct {
				Events []struct {
					EventID string `json:"event_id"`
					Stream  string `json:"stream"`
				} `json:"events"`
				HasMore bool     `json:"has_more"`
				Next    string   `json:"next"`
				Streams []string `json:"streams"`
			}
			if status := getV1(t, base+"/v1/customers/"+d.customer+"/events?limit=1&after="+after, &page); status != http.StatusOK {
				t.Fatalf("%s: events page answered %d", name, status)
			}
			for _, e := range page.Events {
				gotIDs, gotStreams = append(gotIDs, e.EventID), append(gotStreams, e.Stream)
			}
			if len(page.Streams) != 3 {
				t.Errorf("%s: page merges streams %v, want the customer's, the dispute's and the refund's", name, page.Streams)
			}
			if !page.HasMore {
				break
			}
			after = page.Next
		}
		if !slices.Equal(gotIDs, wantIDs) || !slices.Equal(gotStreams, wantStreams) {
			t.Errorf("%s: history pages\n got %v %v\nwant %v %v", name, gotIDs, gotStreams, wantIDs, wantStreams)
		}

		// CSV: the same events with their stream column.
		req, _ := http.NewRequest(http.MethodGet, base+"/v1/customers/"+d.customer+"/events.csv", nil)
		req.Header.Set("Authorization", "Bearer "+e2eToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := csv.NewReader(resp.Body).ReadAll()
		resp.Body.Close()
		if err != nil || len(rows) != 5 {
			t.Fatalf("%s: CSV has %d rows (%v), want a header and 4", name, len(rows), err)
		}
		for j, row := range rows[1:] {
			if row[0] != wantIDs[j] || row[1] != wantStreams[j] {
				t.Errorf("%s: CSV row %d = %s in %s, want %s in %s", name, j+1, row[0], row[1], wantIDs[j], wantStreams[j])
			}
		}

		// ledger history: JSON Lines, same order and streams.
		out, err := (&auditDB{url: url}).ledger(nil, "history", d.customer)
		if err != nil {
			t.Fatal(err)
		}
		var lineIDs []string
		for line := range strings.Lines(out) {
			var e struct {
				EventID string `json:"event_id"`
				Stream  string `json:"stream"`
			}
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				t.Fatal(err)
			}
			lineIDs = append(lineIDs, e.EventID+"@"+e.Stream)
		}
		var wantLines []string
		for j := range wantIDs {
			wantLines = append(wantLines, wantIDs[j]+"@"+wantStreams[j])
		}
		if !slices.Equal(lineIDs, wantLines) {
			t.Errorf("%s: ledger history\n got %v\nwant %v", name, lineIDs, wantLines)
		}

		// state?at=: the dispute from its created time on, folded among the charge's events.
		for _, tc := range []struct {
			at       int64
			events   int
			disputes int
			refunded int64
		}{{minCreated(d.order) - 1, 0, 0, 0}, {minCreated(d.order), 1, 0, 0}, {minCreated(d.order) + 100, 2, 1, 0},
			{minCreated(d.order) + 200, 3, 1, 0}, {minCreated(d.order) + 300, 4, 1, 1000}} {
			var st struct {
				Events   int `json:"events"`
				Disputes []struct {
					DisputeID  string `json:"dispute_id"`
					CustomerID string `json:"customer_id"`
				} `json:"disputes"`
				Charges []struct {
					AmountRefunded int64 `json:"amount_refunded"`
				} `json:"charges"`
			}
			at := time.Unix(tc.at, 0).UTC().Format(time.RFC3339)
			if status := getV1(t, base+"/v1/customers/"+d.customer+"/state?at="+at, &st); status != http.StatusOK {
				t.Fatalf("%s: state at %s answered %d", name, at, status)
			}
			var refunded int64
			for _, ch := range st.Charges {
				refunded += ch.AmountRefunded
			}
			if st.Events != tc.events || len(st.Disputes) != tc.disputes || refunded != tc.refunded ||
				(tc.disputes == 1 && (st.Disputes[0].DisputeID != d.dispute || st.Disputes[0].CustomerID != d.customer)) {
				t.Errorf("%s: state at %s: %d events, disputes %+v, refunded %d; want %d events, %d dispute(s) of %s, refunded %d",
					name, at, st.Events, st.Disputes, refunded, tc.events, tc.disputes, d.customer, tc.refunded)
			}
		}
	}
}

func ids(es []linkedEvent) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.id
	}
	return out
}

func minCreated(es []linkedEvent) int64 {
	m := es[0].created
	for _, e := range es {
		m = min(m, e.created)
	}
	return m
}
