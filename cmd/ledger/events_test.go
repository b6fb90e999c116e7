package main

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
)

// TestEventsMatchReadme keeps the README's list of event types to enable
// equal to what `ledger events` prints, which is what the decoder handles.
func TestEventsMatchReadme(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if err := run(context.Background(), []string{"events"}, env(), &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, block, ok := strings.Cut(string(readme), "<!-- ledger events -->\n```\n")
	block, _, closed := strings.Cut(block, "```\n<!-- /ledger events -->")
	if !ok || !closed {
		t.Fatal("README has no <!-- ledger events --> block")
	}
	if block != out.String() {
		t.Errorf("README lists\n%s\nledger events prints\n%s", block, out.String())
	}
	if !strings.Contains(out.String(), "customer.subscription.updated\n") || !strings.Contains(out.String(), "invoice.payment_action_required\n") {
		t.Errorf("ledger events misses handled types:\n%s", out.String())
	}
}
