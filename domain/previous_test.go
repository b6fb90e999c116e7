package domain

import (
	"encoding/json"
	"reflect"
	"testing"
)

// TestPreviousAttributesAsJSON holds what previousAttributes reads in place
// to encoding/json: chainValues to json.Unmarshal into a map of raw values,
// jsonText, jsonBool and jsonTimestampText to json.Unmarshal of each value.
func TestPreviousAttributesAsJSON(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{
		`{"status":"trialing","latest_invoice":null,"cancel_at":1700000000,"cancel_at_period_end":true}`,
		`{"st\u0061tus":"past_due","ended_at":0}`,
		`{"status":"a","status":"b","canceled_at":1,"canceled_at":2}`,
		`{"Status":"a","other":{"status":"x"},"items":{"data":[]}}`,
		"{\"status\":\"\xff\"}",
		`{}`,
		`[]`,
		`"status"`,
		`null`,
		`{"status":"x"`,
		`{"status":"x"} {}`,
	} {
		got, gotErr := chainValues([]byte(raw))
		var prev map[string]json.RawMessage
		wantErr := json.Unmarshal([]byte(raw), &prev)
		var want [len(chainAttributes)]json.RawMessage
		for i, name := range chainAttributes {
			want[i] = prev[name]
		}
		if (gotErr == nil) != (wantErr == nil) || gotErr == nil && !reflect.DeepEqual(got, want) {
			t.Errorf("chainValues(%s) = %q, %v; json.Unmarshal %q, %v", raw, got, gotErr, want, wantErr)
		}
	}
	for _, v := range []string{
		`"trialing"`, `"send_\u0069nvoice"`, `"Zoë"`, `"\ud800"`, "\"\xff\"", `""`,
		`null`, `true`, `false`, `0`, `-0`, `1700000000`, `-1`, `1.5`, `1e3`, `9223372036854775807`, `9223372036854775808`,
		`"1700000000"`, `"true"`, `{}`, `[]`, `{"id":"x"}`,
	} {
		var text string
		wantErr := json.Unmarshal([]byte(v), &text)
		if got, err := jsonText(json.RawMessage(v)); (err == nil) != (wantErr == nil) || got != text {
			t.Errorf("jsonText(%s) = %q, %v; json.Unmarshal %q, %v", v, got, err, text, wantErr)
		}
		var b bool
		wantErr = json.Unmarshal([]byte(v), &b)
		if got, err := jsonBool(json.RawMessage(v)); (err == nil) != (wantErr == nil) || got != b {
			t.Errorf("jsonBool(%s) = %v, %v; json.Unmarshal %v, %v", v, got, err, b, wantErr)
		}
		var sec *int64
		wantErr = json.Unmarshal([]byte(v), &sec)
		want := ""
		if wantErr == nil && sec != nil {
			want = unixText(unixTime(*sec))
		}
		if got, err := jsonTimestampText(json.RawMessage(v)); (err == nil) != (wantErr == nil) || got != want {
			t.Errorf("jsonTimestampText(%s) = %q, %v; json.Unmarshal %q, %v", v, got, err, want, wantErr)
		}
	}
}
