// Package projections folds the event log into the PostgreSQL read model
// (DESIGN §3, §4, §7) and rebuilds it blue/green when its logic changes.
//
// # Layout
//
// Each build of a projection keeps its tables (declared in readmodel.go) in a schema of
// its own, rm_<name>_v<version>_<random>. Readers query the views of the
// readmodel schema (readmodel.customers, .subscriptions, .invoices, .charges,
// .disputes), which select from the live schema; projection_checkpoints
// records, per projection, the live version, its schema and the position of
// the last event applied to it.
//
// # Applying events
//
// A Runner behind the head first reads the log itself from the checkpoint
// (ReadAll), in batches that grow from 1,000 to 16,000 records while each
// read comes back full, reading and decoding the next batch while the
// current one is folded; at the first short read it subscribes to the log
// from there and folds the log's own, small, live batches (a live batch of
// 1,000 records or more sends it back to reading). Each batch is one
// transaction (a catch-up folds two batches in one when the second is
// decoded already, each as if alone: catchUpJoin): it first advances the
// checkpoint by compare-and-set on the previous position and schema (0
// rows: another runner or a swap got there first, so the batch is rolled
// back and the runner restarts from the stored checkpoint), then loads the stored rows of the customers the batch names
// into domain.CustomerState, folds the batch's facts in memory and writes the
// changed rows back with multi-row upserts. The fold is order independent and
// idempotent, so a batch applied twice changes nothing. Live batches start
// from the states the runner's last commits left, held in memory while they
// are what the read model stores (livestates.go), and load the others.
//
// # Events that are not applied
//
//   - Types domain.Handles rejects are skipped and counted in
//     ledger_projection_events_total{outcome="unhandled_type"}; never an error.
//   - Facts that name no customer have no state to fold into: skipped,
//     counted as outcome="no_customer"; except disputes, which wait for
//     their charge's link (links.go) and are then folded into its customer.
//   - An event whose envelope or data.object cannot be decoded, or whose
//     values domain.DecodeStorable refuses (an id over 255 bytes, a time
//     outside 1970-9999), is a dead letter: it is recorded in
//     projection_dead_letters (event, position, stream, type, error) in the
//     same transaction as its batch, counted as outcome="dead_letter",
//     logged at ERROR, and skipped. Skip-and-record rather than stop,
//     because one malformed event must not freeze entitlements for every
//     other customer. Dead letters belong to the schema that met them; after
//     a fix, an operator re-drives them with Retry or by rebuilding, and they
//     go away with the schema they were recorded for.
//   - When PostgreSQL refuses a batch's values (isDataError: SQLSTATE
//     classes 21, 22, 23, 54; a fold in rounds reports 21's two
//     customers claiming one object itself), the batch is folded again in a new
//     transaction, bisected under savepoints, and only the events that fail
//     alone are dead letters (poison.go). Every other error (connection,
//     serialization, deadlock, shutdown) rolls the batch back and the Runner
//     retries with a short back-off from the stored checkpoint.
//
// # One runner, one build
//
// A Runner holds a session-level advisory lock keyed by the projection's
// name on a dedicated connection while it runs; other replicas retry every
// few seconds and take over when the holder's connection closes. Building a
// schema (a new version, Rebuild, Diff) takes a second advisory lock, so one
// build runs at a time per projection.
//
// # Versions and blue/green rebuilds
//
// When no version is live, the Runner creates an empty schema and the views
// at once (readers get empty results, not errors) and catches up live. When
// the stored version is older than Projection.Version, it builds the new
// version beside the live one from the start of the log up to the head (the
// live model keeps serving, frozen at its checkpoint; fill.go folds it in
// memory and writes it with COPY), then swaps: in one
// transaction it locks the checkpoint row, applies the events appended since,
// re-creates the views on the new schema and updates the row; the old schema
// is dropped right after. A build is not resumed: a replica that dies
// mid-build leaves an unreferenced schema, which the next build drops before
// starting afresh (rebuilds run at well over 30,000 events/s). Rebuild does
// the same for the current version while a Runner elsewhere keeps the live
// model current; the swap's row lock and the Runner's compare-and-set keep
// the two from losing events. The swap waits at most two seconds for
// readers holding the views (lock_timeout), so readers never queue behind it
// for long, and retries when it times out. A Runner whose version is older
// than the live one (an old replica during a rolling deploy) refuses to run
// rather than undo it.
//
// # Connections
//
// A Runner holds two pooled connections while it follows the log (its lock,
// the subscription or a read of its catch-up) plus one per batch transaction.
// While it builds: two locks, a read of the log, the count of the log beside
// the first chunks, the next chunk's dead letters and API versions, and the
// fold's reads of late facts' histories (up to one per core) beside the
// flush's transactions (one a table, written while the next chunks fold; at
// the end beside the links' COPYs, one a table too, then each table's
// ANALYZE), and announce's two pages at once.
// Give the pool room for that besides the API: pool_max_conns of 10 or more
// (serve's default pool is 16). No stage of a build holds a connection
// while it waits for another that has none yet (announce's second page
// waits for the first, which holds its own), so a smaller pool slows a
// build, as long as it has a connection beyond the locks'.
//
// The plan mapping (LEDGER_PLANS) is part of a version's identity: see plans.go.
package projections
