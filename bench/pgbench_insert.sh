#!/usr/bin/env bash
# Reference for the ingest benchmark: PostgreSQL's own single-row INSERT rate
# on this machine, one autocommit INSERT of a payload of the webhook
# benchmark's size per transaction, at the benchmark's concurrency.
#   bench/pgbench_insert.sh [clients] [seconds] [payload_bytes]
set -euo pipefail
clients=${1:-16} seconds=${2:-10} bytes=${3:-450}
db=ledger_pgbench_$$
psql -qX -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db"
trap 'psql -qX -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE $db WITH (FORCE)"' EXIT
psql -qX -h 127.0.0.1 -U postgres -d "$db" -c "CREATE TABLE t (id bigserial PRIMARY KEY, event_id text UNIQUE, payload bytea)"
script=$(mktemp)
printf "INSERT INTO t (event_id, payload) VALUES ('evt_' || md5(random()::text), convert_to(repeat('x', %d), 'UTF8'));\n" "$bytes" >"$script"
pgbench -h 127.0.0.1 -U postgres -n -c "$clients" -j 2 -T "$seconds" -f "$script" "$db" | grep -E 'tps|latency average'
rm -f "$script"
