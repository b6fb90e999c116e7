package api

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	webhooks      *prometheus.CounterVec // by outcome
	appendSeconds prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ledger_webhook_deliveries_total",
			Help: "Stripe webhook deliveries by outcome (stored, duplicate, rejected, too_large, unavailable, failed).",
		}, []string{"outcome"}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ledger_event_append_seconds",
			Help:    "Time to append a verified event to the event log.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	for _, c := range []prometheus.Collector{m.webhooks, m.appendSeconds} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
