package domain_test

import (
	"math/rand/v2"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

// BenchmarkParseEnvelope parses domaintest's lifecycle deliveries as the
// webhook does, one op a delivery.
func BenchmarkParseEnvelope(b *testing.B) {
	var payloads [][]byte
	var payloadBytes int
	for _, d := range domaintest.Lifecycles(rand.New(rand.NewPCG(6, 6)), 200) {
		payloads = append(payloads, d.Payload)
		payloadBytes += len(d.Payload)
	}
	b.SetBytes(int64(payloadBytes / len(payloads)))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := domain.ParseEnvelope(payloads[i%len(payloads)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
