package domain_test

import (
	"math/rand/v2"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

// BenchmarkDecode decodes domaintest's lifecycle events, in their realistic
// mix of types and API versions, as a projection rebuild does: one op is one
// stored event, its envelope taken from the log rather than parsed again.
func BenchmarkDecode(b *testing.B) {
	plans, err := domain.ParsePlans(domaintest.Plans)
	if err != nil {
		b.Fatal(err)
	}
	type record struct {
		env     domain.Envelope
		payload []byte
	}
	var recs []record
	var payloadBytes int
	for _, d := range domaintest.Lifecycles(rand.New(rand.NewPCG(6, 6)), 200) {
		env := domain.Envelope{ID: d.EventID, Type: d.Type, Created: d.Created}
		if _, err := domain.Decode(env, d.Payload, plans); err != nil {
			b.Fatalf("Decode %s: %v", d.EventID, err)
		}
		recs = append(recs, record{env, d.Payload})
		payloadBytes += len(d.Payload)
	}
	b.SetBytes(int64(payloadBytes / len(recs)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r := recs[i%len(recs)]
		if _, err := domain.Decode(r.env, r.payload, plans); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
