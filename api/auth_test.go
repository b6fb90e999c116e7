package api_test

import (
	"encoding/json"
	"io"
	"net/http"
	"testing"
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
