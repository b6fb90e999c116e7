#!/usr/bin/env bash
# Ingest benchmark: serves a ledger (projection running) on a scratch
# database, runs bench/loadgen against it at concurrency 8 and 1 (each run
# measures PostgreSQL's raw single-row INSERT reference beside it), then
# stops the ledger and drops the database.
#   bench/ingest.sh [deliveries]        LEDGER_BIN=path to test another build
set -euo pipefail
cd "$(dirname "$0")/.."
deliveries=${1:-20000}
server=${LEDGER_BENCH_SERVER:-postgres://postgres@127.0.0.1:5432}
db=ledger_ingest_$$
port=$((20000 + $$ % 20000))
work=$(mktemp -d)
bin=${LEDGER_BIN:-$work/ledger}
[ -n "${LEDGER_BIN:-}" ] || go build -o "$bin" ./cmd/ledger
go build -o "$work/loadgen" ./bench/loadgen
export DATABASE_URL="$server/$db?sslmode=disable" STRIPE_WEBHOOK_SECRET=whsec_bench LEDGER_ADDR=127.0.0.1:$port
cleanup() {
	[ -z "${pid:-}" ] || { kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true; }
	psql -qX "$server/postgres?sslmode=disable" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
	rm -rf "$work"
}
trap cleanup EXIT
"$bin" migrate
"$bin" serve >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -sf "http://$LEDGER_ADDR/healthz" >/dev/null && break; sleep 0.1; done
for c in 8 1; do
	n=$deliveries
	[ "$c" = 8 ] || n=$((deliveries / 8))
	"$work/loadgen" -url "http://$LEDGER_ADDR/stripe/webhook" -concurrency "$c" -deliveries "$n" \
		-ledger-pid "$pid" -ledger-db "$DATABASE_URL" \
		-reference-db "$server/postgres?sslmode=disable" -reference-duration 10s
done
