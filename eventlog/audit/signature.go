package audit

import (
	"errors"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"
)

// Errors of VerifySignature.
var (
	ErrNoSignature        = errors.New("no Stripe-Signature header")
	ErrMalformedSignature = errors.New("malformed Stripe-Signature header")
	ErrSignatureMismatch  = errors.New("no v1 signature matches a configured webhook secret")
	ErrStaleSignature     = errors.New("stale signature timestamp")
)

// VerifySignature checks a Stripe-Signature header against payload under
// each secret (several during secret rotation), with stripe-go's webhook
// package. The signature is checked before the timestamp, so that "stale" is
// only ever said of an authentic delivery; with tolerance > 0 an authentic
// signature older than tolerance is ErrStaleSignature, with 0 its age is not
// checked (auditing stored events). The payload's api_version is never
// compared with stripe-go's pin.
func VerifySignature(payload []byte, header string, secrets []string, tolerance time.Duration) error {
	if header == "" {
		return ErrNoSignature
	}
	for _, secret := range secrets {
		err := webhook.ValidatePayloadIgnoringTolerance(payload, header, secret)
		if errors.Is(err, webhook.ErrInvalidHeader) || errors.Is(err, webhook.ErrNotSigned) {
			return ErrMalformedSignature
		}
		if err != nil {
			continue
		}
		if tolerance > 0 && webhook.ValidatePayloadWithTolerance(payload, header, secret, tolerance) != nil {
			return ErrStaleSignature
		}
		return nil
	}
	return ErrSignatureMismatch
}
