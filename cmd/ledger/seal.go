package main

import (
	"context"
	"encoding/hex"
	"fmt"

	"github.com/stripe-ledger/stripe-ledger/eventlog/seal"
)

// sealHelp is the long help of `ledger seal`.
const sealHelp = `Write a seal: the head (version, hash) of every stream that grew since the
previous seal, chained to it by hash. Prints "seal <id> <hash>"; write the hash
down outside the database, and ledger verify --seal <hash> later proves that
nothing the seal covers was removed or rewritten since. When nothing was
appended since the last seal, prints that one instead. ledger serve seals every
LEDGER_SEAL_INTERVAL by itself.`

// runSeal is `ledger seal`.
func (c *cli) runSeal(ctx context.Context) error {
	b, _, _, err := c.backends(ctx)
	if err != nil {
		return err
	}
	defer b.Close()
	sl, ok, err := seal.NewSealer(b.Pool, b.Log).Seal(ctx, true)
	if err != nil {
		return err
	}
	if ok {
		fmt.Fprintf(c.stdout, "%s (%d stream head(s) up to position %s)\n", sl, len(sl.Heads), sl.Position)
		return nil
	}
	chain, err := seal.Check(ctx, b.Pool, "")
	if err != nil {
		return err
	}
	if chain.Seals == 0 {
		fmt.Fprintln(c.stdout, "the log is empty: nothing to seal")
		return nil
	}
	fmt.Fprintf(c.stdout, "seal %d %s (the log has not grown since)\n", chain.Latest.ID, hex.EncodeToString(chain.Latest.Hash))
	return nil
}
