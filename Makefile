# stripe-ledger: `make run` serves on the default database, `make test` runs every test.
GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
# A development-only webhook secret and API token; set your own in the environment.
DEV_WEBHOOK_SECRET ?= whsec_development_only
DEV_API_TOKEN      ?= dev-token

.PHONY: run test lint bench build

build:
	$(GO) build -o bin/ledger ./cmd/ledger

run:
	@echo "webhook secret: $${STRIPE_WEBHOOK_SECRET:-$(DEV_WEBHOOK_SECRET)}"
	@echo "API token:      $${LEDGER_API_TOKEN:-$(DEV_API_TOKEN)}"
	STRIPE_WEBHOOK_SECRET="$${STRIPE_WEBHOOK_SECRET:-$(DEV_WEBHOOK_SECRET)}" \
	LEDGER_API_TOKEN="$${LEDGER_API_TOKEN:-$(DEV_API_TOKEN)}" \
	$(GO) run ./cmd/ledger serve --migrate

test:
	$(GO) vet ./...
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) test -race -count=1 -timeout 20m ./...

lint:
	$(GO) run $(STATICCHECK) ./...

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...
