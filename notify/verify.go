package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// SignatureHeader is the header a pushed notification is signed in:
// t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>, like Stripe's.
const SignatureHeader = "Ledger-Signature"

// DefaultTolerance is how old a signature's timestamp may be, as Stripe's.
const DefaultTolerance = 5 * time.Minute

// MaxBody is the largest notification body Receive reads.
const MaxBody = 1 << 20

// Errors of Verify; wrapped, so test them with errors.Is.
var (
	ErrNoSignature  = errors.New("notify: no valid " + SignatureHeader + " header")
	ErrBadSignature = errors.New("notify: signature does not match the body")
	ErrStale        = errors.New("notify: signature timestamp outside the tolerance")
)

// Sign returns the Ledger-Signature header value for body signed with
// secret at t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, []byte(secret))
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify checks header (the Ledger-Signature value) against body with each
// of secrets (several during a rotation) and a timestamp no further than
// tolerance from now (0: DefaultTolerance), then decodes body.
func Verify(body []byte, header string, secrets []string, tolerance time.Duration) (Notification, error) {
	if tolerance == 0 {
		tolerance = DefaultTolerance
	}
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			if sig, err := hex.DecodeString(v); err == nil {
				sigs = append(sigs, sig)
			}
		}
	}
	unix, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return Notification{}, ErrNoSignature
	}
	if age := time.Since(time.Unix(unix, 0)); age > tolerance || age < -tolerance {
		return Notification{}, fmt.Errorf("%w: signed %s ago", ErrStale, age.Round(time.Second))
	}
	for _, secret := range secrets {
		want := mac(secret, ts, body)
		for _, sig := range sigs {
			if hmac.Equal(sig, want) { // constant time
				var n Notification
				if err := json.Unmarshal(body, &n); err != nil {
					return Notification{}, fmt.Errorf("notify: decode notification: %w", err)
				}
				return n, nil
			}
		}
	}
	return Notification{}, ErrBadSignature
}

// Receive reads r's body and verifies it like Verify: what a receiver's
// handler calls first.
func Receive(r *http.Request, secrets []string, tolerance time.Duration) (Notification, error) {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBody))
	if err != nil {
		return Notification{}, fmt.Errorf("notify: read body: %w", err)
	}
	return Verify(body, r.Header.Get(SignatureHeader), secrets, tolerance)
}
