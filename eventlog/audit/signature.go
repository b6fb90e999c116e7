package audit

import (
	"errors"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
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

// Signature statuses of one stored record (SignatureStatus).
const (
	SignatureValid      = "valid"              // the stored Stripe-Signature matches the stored payload
	SignatureByDesign   = "unsigned-by-design" // fetched from Stripe's API: no signature covers it
	SignatureMissing    = "missing"            // delivered, yet no signature is stored
	SignatureInvalid    = "invalid"            // malformed, or matches under none of the secrets
	SignatureNotChecked = "not-checked"        // signed, but no webhook secret was given to check it
)

// SignatureStatus says what one record's stored signature proves, as
// Verify judges it: fetched records are unsigned by design, delivered ones
// must carry a signature that matches under one of secrets.
func SignatureStatus(r eventlog.Record, secrets []string) string {
	if r.Signature == "" {
		if env, err := domain.ParseEnvelope(r.Payload); err == nil && unsignedByDesign(r.Source, env) {
			return SignatureByDesign
		}
		return SignatureMissing
	}
	if len(secrets) == 0 {
		return SignatureNotChecked
	}
	if VerifySignature(r.Payload, r.Signature, secrets, 0) != nil {
		return SignatureInvalid
	}
	return SignatureValid
}
