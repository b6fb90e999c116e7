package eventlog_test

import (
	"encoding/json"
	"testing"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

func TestPositionTextForm(t *testing.T) {
	t.Parallel()
	p := eventlog.Position{Commit: 7, Prepare: 3}
	b, err := json.Marshal(struct {
		P eventlog.Position `json:"p"`
	}{p})
	if err != nil || string(b) != `{"p":"7/3"}` {
		t.Fatalf("JSON %s, %v; want {\"p\":\"7/3\"}", b, err)
	}
	var back eventlog.Position
	if err := back.UnmarshalText([]byte(p.String())); err != nil || back != p {
		t.Fatalf("UnmarshalText(%q) = %v, %v", p.String(), back, err)
	}
	for _, bad := range []string{"", "7", "7/", "/3", "a/3", "7/3/1", "-1/3"} {
		if err := back.UnmarshalText([]byte(bad)); err == nil {
			t.Errorf("UnmarshalText(%q) accepted", bad)
		}
	}
}
