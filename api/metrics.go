package api

import (
	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	webhooks *prometheus.CounterVec // by outcome
	// The outcomes of a 200, resolved once: WithLabelValues hashes the label
	// and takes the vector's lock on each call.
	stored, duplicate prometheus.Counter
	appendSeconds     prometheus.Histogram
	inflight          prometheus.Gauge // webhook requests being served
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "ledger_webhook_deliveries_total",
			Help: "Stripe webhook deliveries by outcome (stored, duplicate, rejected, too_large, unavailable, overloaded, failed).",
		}, []string{"outcome"}),
		appendSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "ledger_event_append_seconds",
			Help:    "Time to append a verified event to the event log.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		inflight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "ledger_webhook_inflight",
			Help: "Webhook requests being served now, slow senders included (capped by LEDGER_WEBHOOK_MAX_INFLIGHT).",
		}),
	}
	m.stored, m.duplicate = m.webhooks.WithLabelValues("stored"), m.webhooks.WithLabelValues("duplicate")
	for _, c := range []prometheus.Collector{m.webhooks, m.appendSeconds, m.inflight} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
