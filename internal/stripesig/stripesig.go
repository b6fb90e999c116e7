// Package stripesig checks Stripe-Signature headers: the webhook verifies
// each delivery with it before storing anything, and the auditor (ledger
// verify, offline verify, the console's audit page) re-verifies the
// signatures stored beside the payloads. One implementation, on stripe-go's
// webhook package, so that what the webhook accepted and what an audit
// proves can never drift apart.
package stripesig

import (
	"errors"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"
)

// Errors of Verify.
var (
	ErrMissing   = errors.New("no Stripe-Signature header")
	ErrMalformed = errors.New("malformed Stripe-Signature header")
	ErrMismatch  = errors.New("no v1 signature matches a configured webhook secret")
	ErrStale     = errors.New("stale signature timestamp")
)

// Verify checks a Stripe-Signature header against payload under each secret
// (several during secret rotation). "Stale" is only ever said of an
// authentic delivery; with tolerance > 0 an authentic signature older than
// tolerance is ErrStale, with 0 its age is not checked (auditing stored
// events). The payload's api_version is never compared with stripe-go's pin.
// A fresh authentic delivery costs one HMAC per secret tried; only an old
// timestamp is checked a second time, without the tolerance, to tell a
// stale delivery from a forged one.
func Verify(payload []byte, header string, secrets []string, tolerance time.Duration) error {
	if header == "" {
		return ErrMissing
	}
	for _, secret := range secrets {
		var err error
		if tolerance > 0 {
			err = webhook.ValidatePayloadWithTolerance(payload, header, secret, tolerance)
		} else {
			err = webhook.ValidatePayloadIgnoringTolerance(payload, header, secret)
		}
		switch {
		case err == nil:
			return nil
		case errors.Is(err, webhook.ErrInvalidHeader) || errors.Is(err, webhook.ErrNotSigned):
			return ErrMalformed
		case errors.Is(err, webhook.ErrTooOld) && webhook.ValidatePayloadIgnoringTolerance(payload, header, secret) == nil:
			return ErrStale
		}
	}
	return ErrMismatch
}
