package projections

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// metrics are the projections' Prometheus collectors, and the untested API
// versions already logged.
type metrics struct {
	events      *prometheus.CounterVec
	apiVersions *prometheus.CounterVec
	warned      sync.Map // API version -> struct{}
}

// newMetrics registers the collectors with reg, reusing those another
// Runner registered there already; a nil reg leaves them unregistered.
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ledger_projection_events_total",
		Help: "Events a projection processed, by outcome: applied, unhandled_type (skipped), no_customer (skipped), dead_letter (recorded and skipped).",
	}, []string{"projection", "outcome"})
	apiVersions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ledger_events_api_version_total",
		Help: "Events the projections processed, by Stripe API version; known is false for versions the decoder was not tested with (decoded by shape).",
	}, []string{"api_version", "known"})
	m := &metrics{events: events, apiVersions: apiVersions}
	if reg != nil {
		for _, c := range []**prometheus.CounterVec{&m.events, &m.apiVersions} {
			if err := reg.Register(*c); err != nil {
				are, ok := errors.AsType[prometheus.AlreadyRegisteredError](err)
				if !ok {
					return nil, fmt.Errorf("register projection metrics: %w", err)
				}
				*c = are.ExistingCollector.(*prometheus.CounterVec)
			}
		}
	}
	return m, nil
}

// observe counts the events of b, and logs once at WARN each API version
// the decoder was not tested with.
func (m *metrics) observe(ctx context.Context, logger *slog.Logger, projection string, b *batch) {
	for outcome, n := range b.outcomes {
		m.events.WithLabelValues(projection, outcome).Add(float64(n))
	}
	for version, seen := range b.apiVersions {
		tested := domain.TestedAPIVersion(version)
		m.apiVersions.WithLabelValues(version, strconv.FormatBool(tested)).Add(float64(seen.events))
		if _, logged := m.warned.LoadOrStore(version, struct{}{}); !tested && !logged {
			logger.WarnContext(ctx, "events of a Stripe API version the decoder was not tested with; decoding them by shape",
				"api_version", version, "event", seen.firstEventID, "tested", domain.TestedAPIVersions)
		}
	}
}
