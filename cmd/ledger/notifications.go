package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stripe-ledger/stripe-ledger/internal/report"
	"github.com/stripe-ledger/stripe-ledger/projections"
)

// newNotificationsStatusCmd is `ledger notifications status`.
func newNotificationsStatusCmd(c *cli) *cobra.Command {
	return newListCmd(c, "status", "Show each receiver's cursor, pending and delivered notifications, and the delivery it is failing",
		"RECEIVER\tPOSITION\tPENDING\tDELIVERED\tABANDONED\tFAILING\tSINCE\tATTEMPTS\tLAST ERROR",
		func(ctx context.Context, b *Backends) ([]report.ReceiverStatus, error) {
			return projections.ReceiverStatuses(ctx, b.Pool)
		},
		func(st report.ReceiverStatus) string {
			since := ""
			if st.FailingSince != nil {
				since = st.FailingSince.UTC().Format("2006-01-02T15:04:05Z")
			}
			return fmt.Sprintf("%s\t%d\t%d\t%d\t%d\t%s\t%s\t%d\t%s", st.Receiver, st.Position, st.Pending, st.Delivered,
				st.Abandoned, st.FailingID, since, st.Attempts, st.LastError)
		})
}

// newNotificationsReplayCmd is `ledger notifications replay`.
func newNotificationsReplayCmd(c *cli) *cobra.Command {
	var since, id string
	var receivers []string
	cmd := &cobra.Command{
		Use:   "replay --since TIME | --id NTF_ID",
		Short: "Send notifications again: those derived since TIME, or NTF_ID and every one after it",
		Long: `Move the receivers' cursors back so that the running sender sends again every
notification derived at or after --since (an RFC 3339 time or a date), or the
notification --id and every one after it, in order. Receivers deduplicate by
notification id. --receiver (as ledger notifications status names it) limits
the replay to those receivers; without it, every receiver replays.`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if (since == "") == (id == "") {
				return usageError("notifications replay: give --since or --id, not both or neither")
			}
			from, err := parseTimeFlag("--since", since, false)
			if err != nil {
				return err
			}
			b, _, _, err := c.backends(cmd.Context())
			if err != nil {
				return err
			}
			defer b.Close()
			moved, err := projections.Replay(cmd.Context(), b.Pool, receivers, from, id)
			if errors.Is(err, projections.ErrNoNotification) {
				return problemError{fmt.Errorf("notifications replay: no notification matches %s", replayFrom(since, id))}
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(c.stdout, "replaying to %d receiver(s)\n", moved)
			return nil
		},
	}
	cmd.Flags().StringVar(&since, "since", "", "replay the notifications derived at or after this time")
	cmd.Flags().StringVar(&id, "id", "", "replay this notification (ntf_…) and every one after it")
	cmd.Flags().StringSliceVar(&receivers, "receiver", nil, "replay to this receiver only (repeatable)")
	return cmd
}

// replayFrom names what a replay was asked to start from.
func replayFrom(since, id string) string {
	if id != "" {
		return "--id " + id
	}
	return "--since " + since
}
