package api_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/api"
	"github.com/stripe-ledger/stripe-ledger/eventlog/postgres"
	"github.com/stripe-ledger/stripe-ledger/internal/pgtest"
)

func getJSON(t *testing.T, url, token string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	raw, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatalf("GET %s: not JSON (%d): %s", url, resp.StatusCode, raw)
	}
	return resp.StatusCode, out
}

func errorCode(body map[string]any) string {
	e, _ := body["error"].(map[string]any)
	code, _ := e["code"].(string)
	return code
}

func TestV1RequiresBearerToken(t *testing.T) {
	t.Parallel()
	env := newTestEnv(t)
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", http.StatusUnauthorized},
		{"wrong token", "nope", http.StatusUnauthorized},
		// No projection runs here, so the read model does not exist yet.
		{"right token, read model not built", apiToken, http.StatusServiceUnavailable},
	} {
		status, body := getJSON(t, env.url+"/v1/customers/cus_missing", tc.token)
		if status != tc.want || errorCode(body) == "" {
			t.Errorf("%s: got %d %v, want %d with an error code", tc.name, status, body, tc.want)
		}
	}
}

func TestV1WithoutConfiguredTokenAnswers503(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := api.New(api.Config{Log: postgres.New(pool, logger), DB: pool, WebhookSecrets: []string{secret}, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	status, body := getJSON(t, ts.URL+"/v1/customers/cus_x", "anything")
	if status != http.StatusServiceUnavailable || errorCode(body) != "not_configured" {
		t.Fatalf("got %d %v, want 503 not_configured", status, body)
	}
}

func TestReadyzReportsDatabase(t *testing.T) {
	t.Parallel()
	env := newTestEnvBehindProxy(t)
	if status, body := getJSON(t, env.url+"/readyz", ""); status != 200 || body["status"] != "ok" || body["database"] != "ok" {
		t.Fatalf("database up: got %d %v", status, body)
	}
	env.proxy.Down()
	if status, body := getJSON(t, env.url+"/readyz", ""); status != 503 || body["status"] != "degraded" {
		t.Fatalf("database down: got %d %v", status, body)
	}
	if status, body := getJSON(t, env.url+"/v1/customers/cus_x", apiToken); status != 503 || errorCode(body) != "unavailable" {
		t.Fatalf("read API with the database down: got %d %v, want 503 unavailable", status, body)
	}
}

func TestWebhookSecretsAreRequired(t *testing.T) {
	t.Parallel()
	pool, _ := pgtest.NewPool(t)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if _, err := api.New(api.Config{Log: postgres.New(pool, logger), DB: pool, Logger: logger}); err == nil {
		t.Fatal("api.New without webhook secrets succeeded")
	}
}
