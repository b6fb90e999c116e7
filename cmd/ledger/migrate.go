package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stripe-ledger/stripe-ledger/migrations"
)

func newMigrateCmd(c *cli) *cobra.Command {
	return &cobra.Command{
		Use:   "migrate",
		Short: "Create the database if missing and apply the schema migrations",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := c.setup()
			if err != nil {
				return err
			}
			if err := migrations.Migrate(cmd.Context(), cfg.DatabaseURL); err != nil {
				return err
			}
			fmt.Fprintln(c.stdout, "migrations applied")
			return nil
		},
	}
}
