package stripesig_test

import (
	"errors"
	"testing"
	"time"

	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/internal/stripesig"
)

func TestVerify(t *testing.T) {
	t.Parallel()
	payload := []byte(`{"id":"evt_1","object":"event","api_version":"2020-08-27","type":"customer.created"}`)
	sign := func(secret string, at time.Time) string {
		return webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: at}).Header
	}
	now, old := time.Now(), time.Now().Add(-time.Hour)
	tests := []struct {
		name      string
		payload   []byte
		header    string
		secrets   []string
		tolerance time.Duration
		want      error
	}{
		{"valid", payload, sign("whsec_a", now), []string{"whsec_a"}, 5 * time.Minute, nil},
		{"second secret during rotation", payload, sign("whsec_b", now), []string{"whsec_a", "whsec_b"}, 5 * time.Minute, nil},
		{"old pinned api_version is not refused", payload, sign("whsec_a", now), []string{"whsec_a"}, 0, nil},
		{"no header", payload, "", []string{"whsec_a"}, 5 * time.Minute, stripesig.ErrMissing},
		{"no header and no secret", payload, "", nil, 0, stripesig.ErrMissing},
		{"garbage header", payload, "garbage", []string{"whsec_a"}, 5 * time.Minute, stripesig.ErrMalformed},
		{"timestamp not a number", payload, "t=x,v1=zz", []string{"whsec_a"}, 5 * time.Minute, stripesig.ErrMalformed},
		{"no v1 signature", payload, "t=1700000000", []string{"whsec_a"}, 5 * time.Minute, stripesig.ErrMismatch},
		{"another secret", payload, sign("whsec_other", now), []string{"whsec_a", "whsec_b"}, 5 * time.Minute, stripesig.ErrMismatch},
		{"no secret configured", payload, sign("whsec_a", now), nil, 5 * time.Minute, stripesig.ErrMismatch},
		{"tampered payload", append([]byte(" "), payload...), sign("whsec_a", now), []string{"whsec_a"}, 5 * time.Minute, stripesig.ErrMismatch},
		{"stale and authentic", payload, sign("whsec_a", old), []string{"whsec_a"}, 5 * time.Minute, stripesig.ErrStale},
		{"stale and authentic under the second secret", payload, sign("whsec_b", old), []string{"whsec_a", "whsec_b"}, 5 * time.Minute, stripesig.ErrStale},
		{"stale under another secret is a mismatch", payload, sign("whsec_other", old), []string{"whsec_a"}, 5 * time.Minute, stripesig.ErrMismatch},
		{"age unchecked with tolerance 0", payload, sign("whsec_a", old), []string{"whsec_a"}, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if err := stripesig.Verify(tt.payload, tt.header, tt.secrets, tt.tolerance); !errors.Is(err, tt.want) || (err == nil) != (tt.want == nil) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}
