package eventlogtest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

// waitTimeout bounds every wait for a subscription or a blocked call.
const waitTimeout = 15 * time.Second

var eventSeq atomic.Int64

// NewStream returns a stream name no other test uses, e.g. customer-cus_<label>_<random>.
func NewStream(label string) string {
	return "customer-cus_" + label + "_" + randomHex(6)
}

// NewEvent returns a realistic, uniquely identified event for stream. Its
// payload has the irregular whitespace and non-ASCII text of a real body, so
// that byte-for-byte storage is actually exercised.
func NewEvent(stream string) eventlog.Event {
	seq := eventSeq.Add(1)
	id := fmt.Sprintf("evt_%s%d", randomHex(8), seq)
	created := time.Unix(1_700_000_000+seq, 0).UTC()
	// The payload names the stream's customer (and Connect account), so that
	// it routes to stream as the webhook would file it.
	account, customer, _ := strings.Cut(stream, "/")
	if customer == "" {
		account, customer = "", stream
	}
	customer = strings.TrimPrefix(customer, "customer-")
	payload := fmt.Appendf(nil, "{\n  \"id\": %q,\n  \"object\": \"event\",\n  \"api_version\": \"2023-10-16\","+
		"\"created\": %d,\r\n  \"account\": %q,  \"data\": {\"object\": {\"object\": \"invoice\", \"customer\": %q,"+
		" \"description\": \"caf\\u00e9 – naïve ✓\", \"amount_due\": 1999}},\n  \"type\": \"invoice.paid\"\n}\n",
		id, created.Unix(), account, customer)
	sum := sha256.Sum256(payload)
	return eventlog.Event{
		ID:         id,
		Stream:     stream,
		Type:       "invoice.paid",
		APIVersion: "2023-10-16",
		Created:    created,
		Account:    account,
		Payload:    payload,
		Signature:  fmt.Sprintf("t=%d,v1=%s,v0=%s", created.Unix(), hex.EncodeToString(sum[:]), randomHex(32)),
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// Follower runs Subscribe in the background and collects what it delivers.
type Follower struct {
	cancel  context.CancelFunc
	changed chan struct{} // a batch arrived (capacity 1: a wake-up, not a count)
	exited  chan struct{} // Subscribe returned; err is set

	mu      sync.Mutex
	records []eventlog.Record
	empty   int // batches with no record, which the contract forbids
	err     error
}

// Follow starts following l from from. The subscription is stopped when the
// test ends if Stop has not been called.
func Follow(t *testing.T, l eventlog.Log, from eventlog.Position) *Follower {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f := &Follower{cancel: cancel, changed: make(chan struct{}, 1), exited: make(chan struct{})}
	go func() {
		err := l.Subscribe(ctx, from, f.handle)
		f.mu.Lock()
		f.err = err
		f.mu.Unlock()
		close(f.exited)
	}()
	t.Cleanup(func() {
		cancel()
		<-f.exited
	})
	return f
}

func (f *Follower) handle(_ context.Context, batch []eventlog.Record) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(batch) == 0 {
		f.empty++
	}
	f.records = append(f.records, batch...)
	select {
	case f.changed <- struct{}{}:
	default:
	}
	return nil
}

// WaitFor blocks until at least n records have been delivered and returns
// them. It fails the test if Subscribe returns or n records do not arrive in time.
func (f *Follower) WaitFor(t *testing.T, n int) []eventlog.Record {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		f.mu.Lock()
		got := slices.Clone(f.records)
		f.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-f.changed:
		case <-f.exited:
			t.Fatalf("Subscribe returned %v after delivering %d of %d records", f.err, len(got), n)
		case <-timeout:
			t.Fatalf("Subscribe delivered %d of %d records in %v", len(got), n, waitTimeout)
		}
	}
}

// Stop cancels the subscription, checks that Subscribe returned
// context.Canceled, delivered no empty batch and delivered records in strictly
// increasing position order, and returns everything it delivered.
func (f *Follower) Stop(t *testing.T) []eventlog.Record {
	t.Helper()
	f.cancel()
	select {
	case <-f.exited:
	case <-time.After(waitTimeout):
		t.Fatalf("Subscribe did not return within %v of its context being cancelled", waitTimeout)
	}
	if !errors.Is(f.err, context.Canceled) {
		t.Errorf("Subscribe returned %v after cancellation, want context.Canceled", f.err)
	}
	if f.empty > 0 {
		t.Errorf("Subscribe delivered %d empty batches", f.empty)
	}
	checkGlobalOrder(t, f.records)
	return f.records
}

// IDs lists the event ids of recs, in order.
func IDs(recs []eventlog.Record) []string {
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.ID
	}
	return ids
}
