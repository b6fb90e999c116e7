package audit

import (
	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/stripesig"
)

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
	if stripesig.Verify(r.Payload, r.Signature, secrets, 0) != nil {
		return SignatureInvalid
	}
	return SignatureValid
}
