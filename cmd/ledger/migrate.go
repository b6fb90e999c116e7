package main

import (
	"context"
	"fmt"

	"github.com/stripe-ledger/stripe-ledger/migrations"
)

// runMigrate is `ledger migrate`.
func (c *cli) runMigrate(ctx context.Context) error {
	cfg, _, err := c.setup()
	if err != nil {
		return err
	}
	if err := migrations.Migrate(ctx, cfg.DatabaseURL); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout, "migrations applied")
	return nil
}
