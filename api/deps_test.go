package api

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestNoStorageBehindTheEdge: api and api/console declare what they consume
// (ReadModel, console.Engineer, …) and cmd/ledger passes the implementations,
// so neither depends on PostgreSQL or an event-log backend, and their
// handler tests run on in-memory fakes. A package that imports projections,
// internal/stripesync or a backend again fails this.
func TestNoStorageBehindTheEdge(t *testing.T) {
	t.Parallel()
	out, err := exec.Command("go", "list", "-deps", "github.com/stripe-ledger/stripe-ledger/api/...").Output()
	if err != nil {
		t.Fatalf("go list -deps ./api/...: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, "github.com/stripe-ledger/stripe-ledger/api/console") {
		t.Fatalf("go list -deps ./api/... does not list api/console:\n%s", out)
	}
	for _, dep := range deps {
		for _, banned := range []string{
			"github.com/jackc/pgx/",
			"github.com/stripe-ledger/stripe-ledger/eventlog/postgres",
			"github.com/stripe-ledger/stripe-ledger/eventlog/esdb",
			"github.com/stripe-ledger/stripe-ledger/projections",
		} {
			if strings.HasPrefix(dep, banned) {
				t.Errorf("./api/... depends on %s", dep)
			}
		}
	}
}
