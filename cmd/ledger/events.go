package main

import (
	"context"
	"fmt"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// runEvents is `ledger events`: the Stripe event types the projections
// decode, one a line, the list to enable on the Stripe webhook endpoint
// (the README's copy is checked against it).
func (c *cli) runEvents(context.Context) error {
	for _, typ := range domain.HandledTypes() {
		if _, err := fmt.Fprintln(c.stdout, typ); err != nil {
			return err
		}
	}
	return nil
}
