# The ledger as a container image: a static binary on distroless, run as a
# non-root user. Build from a clone (the .git directory is part of the build
# context, so `ledger version` can report the VCS revision):
#
#   docker build -t stripe-ledger .
#   docker run --rm -p 8080:8080 -e DATABASE_URL=… -e STRIPE_WEBHOOK_SECRET=… stripe-ledger
#
# The builder's Go matches go.mod's `go` line; bump both together.
FROM golang:1.26.8-trixie AS build
WORKDIR /src
# Modules first, so that a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static (no cgo), reproducible paths, VCS revision stamped into the binary.
RUN CGO_ENABLED=0 go build -trimpath -buildvcs=true -ldflags='-s -w' -o /out/ledger ./cmd/ledger

FROM gcr.io/distroless/static-debian13:nonroot
COPY --from=build /out/ledger /ledger
# distroless's nonroot user (65532); nothing in the image is writable by it, nor needs to be.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/ledger"]
# --migrate creates the database if missing and applies pending migrations
# before serving (docs/operations.md: roles, and migrations that alter events).
CMD ["serve", "--migrate"]
