package main

import (
	"context"
	"fmt"
	"io"

	"github.com/stripe-ledger/stripe-ledger/migrations"
)

func runMigrate(ctx context.Context, cfg Config, stdout io.Writer) error {
	if err := migrations.Migrate(ctx, cfg.DatabaseURL); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "migrations applied")
	return nil
}
