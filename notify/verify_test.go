package notify_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stripe-ledger/stripe-ledger/notify"
)

func TestVerify(t *testing.T) {
	t.Parallel()
	body, _ := json.Marshal(notify.Notification{ID: "ntf_1", Type: notify.InvoicePaid, CustomerID: "cus_1", Data: json.RawMessage(`{}`)})
	now := time.Now()
	header := notify.Sign("whsec_new", now, body)
	altered := bytes.Replace(body, []byte("cus_1"), []byte("cus_2"), 1)
	for _, tc := range []struct {
		name    string
		body    []byte
		header  string
		secrets []string
		want    error
	}{
		{"signed with the current secret", body, header, []string{"whsec_new"}, nil},
		{"signed with one of several during a rotation", body, header, []string{"whsec_old", "whsec_new"}, nil},
		{"body altered", altered, header, []string{"whsec_new"}, notify.ErrBadSignature},
		{"another secret", body, header, []string{"whsec_other"}, notify.ErrBadSignature},
		{"too old", body, notify.Sign("whsec_new", now.Add(-10*time.Minute), body), []string{"whsec_new"}, notify.ErrStale},
		{"no header", body, "", []string{"whsec_new"}, notify.ErrNoSignature},
		{"garbage", body, "t=x,v1=zz", []string{"whsec_new"}, notify.ErrNoSignature},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := notify.Verify(tc.body, tc.header, tc.secrets, 0)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify: %v, want %v", err, tc.want)
			}
			if err == nil && (n.ID != "ntf_1" || n.Type != notify.InvoicePaid) {
				t.Fatalf("decoded %+v", n)
			}
		})
	}
}

func TestReceive(t *testing.T) {
	t.Parallel()
	got := make(chan notify.Notification, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := notify.Receive(r, []string{"whsec_x"}, 0)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		got <- n
	}))
	defer srv.Close()
	body := []byte(`{"id":"ntf_2","type":"invoice.paid","data":{}}`)
	for _, tc := range []struct {
		secret string
		status int
	}{{"whsec_wrong", http.StatusBadRequest}, {"whsec_x", http.StatusOK}} {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, bytes.NewReader(body))
		req.Header.Set(notify.SignatureHeader, notify.Sign(tc.secret, time.Now(), body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.status {
			t.Fatalf("signed with %s: %d, want %d", tc.secret, resp.StatusCode, tc.status)
		}
	}
	if n := <-got; n.ID != "ntf_2" {
		t.Fatalf("received %+v", n)
	}
}
