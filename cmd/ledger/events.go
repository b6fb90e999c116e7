package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stripe-ledger/stripe-ledger/domain"
)

// newEventsCmd is `ledger events`: the Stripe event types the projections
// decode, one a line, the list to enable on the Stripe webhook endpoint
// (the README's copy is checked against it).
func newEventsCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "events",
		Short: "List the Stripe event types the ledger decodes: the ones to enable on the webhook endpoint",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			for _, typ := range domain.HandledTypes() {
				if _, err := fmt.Fprintln(c.stdout, typ); err != nil {
					return err
				}
			}
			return nil
		},
	}
}
