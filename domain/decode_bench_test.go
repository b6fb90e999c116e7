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
	benchmarkDecode(b, func(env domain.Envelope, payload []byte, plans domain.Plans) error {
		_, err := domain.Decode(env, payload, plans)
		return err
	})
}

// BenchmarkDecodeStorableLinks is BenchmarkDecode through what the
// projections call: DecodeStorableLinks, the fact made storable and the
// links read in the same pass.
func BenchmarkDecodeStorableLinks(b *testing.B) {
	benchmarkDecode(b, func(env domain.Envelope, payload []byte, plans domain.Plans) error {
		_, _, err := domain.DecodeStorableLinks(env, payload, plans)
		return err
	})
}

func benchmarkDecode(b *testing.B, decode func(domain.Envelope, []byte, domain.Plans) error) {
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
		if err := decode(env, d.Payload, plans); err != nil {
			b.Fatalf("decode %s: %v", d.EventID, err)
		}
		recs = append(recs, record{env, d.Payload})
		payloadBytes += len(d.Payload)
	}
	b.SetBytes(int64(payloadBytes / len(recs)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		r := recs[i%len(recs)]
		if err := decode(r.env, r.payload, plans); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
