package projections

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the projections' Prometheus collectors.
type metrics struct {
	events *prometheus.CounterVec
}

// newMetrics registers the collectors with reg, reusing those another
// Runner registered there already; a nil reg leaves them unregistered.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ledger_projection_events_total",
		Help: "Events a projection processed, by outcome: applied, unhandled_type (skipped), no_customer (skipped), dead_letter (recorded and skipped).",
	}, []string{"projection", "outcome"})
	if reg != nil {
		if err := reg.Register(events); err != nil {
			are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
			if !ok {
				return nil, fmt.Errorf("register projection metrics: %w", err)
			}
			events = are.ExistingCollector.(*prometheus.CounterVec)
		}
	}
	return &metrics{events: events}, nil
}

func (m *metrics) observe(projection string, b *batch) {
	for outcome, n := range b.outcomes {
		m.events.WithLabelValues(projection, outcome).Add(float64(n))
	}
}
