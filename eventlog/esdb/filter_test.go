package esdb_test

import (
	"testing"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
	"github.com/stripe-ledger/stripe-ledger/internal/esdbtest"
	"github.com/stripe-ledger/stripe-ledger/internal/eventlogtest"
)

// TestReadsFilterOnTheServer: in a database that holds far more of other
// applications' events than of the ledger's, ReadAll, Head and CountAfter
// move only the ledger's events over the network.
func TestReadsFilterOnTheServer(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	l := openLog(t, srv.URL())
	stream := eventlogtest.NewStream("share")
	appendN(t, l, stream, 2)
	srv.AppendForeign(t, 2000)
	appendN(t, l, stream, 1)
	srv.AppendForeign(t, 2000)

	before := srv.EventsSent("$all")
	recs, err := l.ReadAll(t.Context(), eventlog.Start, 10)
	if err != nil || len(recs) != 3 {
		t.Fatalf("ReadAll = %d records, %v; want the 3 ledger records", len(recs), err)
	}
	if head, err := l.Head(t.Context()); err != nil || head != recs[2].Position {
		t.Errorf("Head = %s, %v; want %s", head, err, recs[2].Position)
	}
	if n, err := l.CountAfter(t.Context(), recs[0].Position); err != nil || n != 2 {
		t.Errorf("CountAfter = %d, %v; want 2", n, err)
	}
	if sent := srv.EventsSent("$all") - before; sent > len(recs) {
		t.Errorf("the node sent %d events of $all for %d ledger records", sent, len(recs))
	}
}
