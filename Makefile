# stripe-ledger: `make run` serves on the default database, `make test` runs every test.
GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
# A development-only webhook secret and API token; set your own in the environment.
DEV_WEBHOOK_SECRET ?= whsec_development_only
DEV_API_TOKEN      ?= dev-token

.PHONY: run test test-esdb lint bench build

build:
	$(GO) build -buildvcs=auto -o bin/ledger ./cmd/ledger

run:
	@echo "webhook secret: $${STRIPE_WEBHOOK_SECRET:-$(DEV_WEBHOOK_SECRET)}"
	@echo "API token:      $${LEDGER_API_TOKEN:-$(DEV_API_TOKEN)}"
	STRIPE_WEBHOOK_SECRET="$${STRIPE_WEBHOOK_SECRET:-$(DEV_WEBHOOK_SECRET)}" \
	LEDGER_API_TOKEN="$${LEDGER_API_TOKEN:-$(DEV_API_TOKEN)}" \
	$(GO) run ./cmd/ledger serve --migrate

test:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	LEDGER_CONSOLE_SCREENSHOTS="$(CURDIR)/bin/console-screenshots" $(GO) test -race -count=1 -timeout 20m ./...
	$(GO) test -run '^$$' -fuzz '^FuzzParseEnvelope$$' -fuzztime 10000x ./domain/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeApply$$' -fuzztime 10000x ./domain/
	$(GO) test -run '^$$' -fuzz '^FuzzScan$$' -fuzztime 10000x ./domain/

# The event-log contract suite against a real EventStoreDB/KurrentDB
# (`docker compose up -d kurrentdb`), with the local PostgreSQL for the dedup guard.
LEDGER_TEST_ESDB_URL ?= esdb://127.0.0.1:2113?tls=false
test-esdb:
	LEDGER_TEST_ESDB_URL='$(LEDGER_TEST_ESDB_URL)' $(GO) test -race -count=1 -v -run ESDBServer ./eventlog/esdb/...

lint:
	$(GO) run $(STATICCHECK) ./...

# Go benchmarks, then ingest through a served ledger against PostgreSQL's raw
# INSERT rate in the same run (bench/loadgen; BENCH_DELIVERIES at concurrency 8).
BENCH_DELIVERIES ?= 10000
bench:
	$(GO) test -run '^$$' -bench . -benchmem -timeout 30m ./...
	bench/ingest.sh $(BENCH_DELIVERIES)
