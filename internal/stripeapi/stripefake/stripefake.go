// Package stripefake is an in-process fake of the part of Stripe's API the
// ledger reads (events, customers, subscriptions, invoices), for the stateful
// tests stripe-mock cannot serve: it holds what a test puts in it, pages
// lists the way Stripe does (newest first, limit, starting_after, has_more),
// keeps Connect accounts apart by Stripe-Account, and answers injected
// failures (429 with Retry-After, 5xx) on request.
package stripefake

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// API is the fake. Its methods are safe for concurrent use.
type API struct {
	Key string // the bearer key requests must carry
	URL string // base URL, for STRIPE_API_BASE

	mu       sync.Mutex
	events   []object            // in the order added, which tests keep in created order
	objects  map[string][]object // "customer", "subscription", "invoice": in the order added
	faults   []Fault
	requests map[string]int // by path
}

type object struct {
	id, account string
	created     int64
	typ         string // events only
	customer    string // subscriptions and invoices
	status      string // subscriptions
	raw         json.RawMessage
}

// Fault is an injected failure: after After requests (whose path has the
// prefix Path, every path when empty) are answered normally, the next Count
// are answered Status with Header.
type Fault struct {
	Path   string
	After  int
	Count  int
	Status int
	Header http.Header
}

// New starts a fake API that accepts key, closed when the test ends.
func New(tb testing.TB, key string) *API {
	a := &API{Key: key, objects: map[string][]object{}, requests: map[string]int{}}
	srv := httptest.NewServer(http.HandlerFunc(a.serve))
	tb.Cleanup(srv.Close)
	a.URL = srv.URL
	return a
}

// AddEvent adds a Stripe event (the JSON Stripe would list) to /v1/events.
func (a *API) AddEvent(payload []byte) {
	var head struct {
		ID      string `json:"id"`
		Type    string `json:"type"`
		Created int64  `json:"created"`
		Account string `json:"account"`
	}
	if err := json.Unmarshal(payload, &head); err != nil || head.ID == "" {
		panic(fmt.Sprintf("stripefake: AddEvent: not an event: %v", err))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events = append(a.events, object{id: head.ID, account: head.Account, created: head.Created, typ: head.Type, raw: payload})
}

// Put stores (or replaces) a customer, subscription or invoice object of
// account ("" for the platform), as Stripe would return it.
func (a *API) Put(account string, obj []byte) {
	var head struct {
		ID       string          `json:"id"`
		Object   string          `json:"object"`
		Customer json.RawMessage `json:"customer"`
		Status   string          `json:"status"`
		Created  int64           `json:"created"`
	}
	if err := json.Unmarshal(obj, &head); err != nil || head.ID == "" || head.Object == "" {
		panic(fmt.Sprintf("stripefake: Put: not a Stripe object: %v", err))
	}
	var customer string
	_ = json.Unmarshal(head.Customer, &customer)
	o := object{id: head.ID, account: account, created: head.Created, customer: customer, status: head.Status, raw: obj}
	a.mu.Lock()
	defer a.mu.Unlock()
	list := a.objects[head.Object]
	if i := slices.IndexFunc(list, func(x object) bool { return x.id == o.id && x.account == account }); i >= 0 {
		list[i] = o
	} else {
		a.objects[head.Object] = append(list, o)
	}
}

// Inject queues a fault.
func (a *API) Inject(f Fault) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.faults = append(a.faults, f)
}

// Requests is how many requests reached a path starting with prefix.
func (a *API) Requests(prefix string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for p, c := range a.requests {
		if strings.HasPrefix(p, prefix) {
			n += c
		}
	}
	return n
}

var collections = map[string]string{"customers": "customer", "subscriptions": "subscription", "invoices": "invoice", "events": "event"}

func (a *API) serve(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.requests[r.URL.Path]++
	if r.Header.Get("Authorization") != "Bearer "+a.Key {
		writeError(w, http.StatusUnauthorized, "invalid_request_error", "", "Invalid API Key provided")
		return
	}
	for i := range a.faults {
		if f := &a.faults[i]; f.Count > 0 && strings.HasPrefix(r.URL.Path, f.Path) {
			if f.After > 0 {
				f.After--
				break
			}
			f.Count--
			for k, v := range f.Header {
				w.Header()[k] = v
			}
			writeError(w, f.Status, "api_error", "", "injected failure")
			return
		}
	}
	if r.Method != http.MethodGet {
		writeError(w, http.StatusMethodNotAllowed, "invalid_request_error", "", "the fake only answers GET")
		return
	}
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) < 2 || parts[0] != "v1" || collections[parts[1]] == "" || len(parts) > 3 {
		writeError(w, http.StatusNotFound, "invalid_request_error", "", "Unrecognized request URL")
		return
	}
	kind, account := collections[parts[1]], r.Header.Get("Stripe-Account")
	all := a.objects[kind]
	if kind == "event" {
		all = a.events
	}
	if len(parts) == 3 {
		for _, o := range all {
			if o.id == parts[2] && o.account == account {
				writeJSON(w, o.raw)
				return
			}
		}
		writeError(w, http.StatusNotFound, "invalid_request_error", "resource_missing", fmt.Sprintf("No such %s: '%s'", kind, parts[2]))
		return
	}
	a.list(w, r, kind, account, all)
}

// list answers a list request newest first, as Stripe does.
func (a *API) list(w http.ResponseWriter, r *http.Request, kind, account string, all []object) {
	q := r.URL.Query()
	limit := 10
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 100 {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "parameter_invalid_integer", "limit must be 1 to 100")
			return
		}
		limit = n
	}
	gte, _ := strconv.ParseInt(q.Get("created[gte]"), 10, 64)
	types := q["types[]"]
	var match []object
	for i := len(all) - 1; i >= 0; i-- {
		o := all[i]
		switch {
		case o.account != account, o.created < gte,
			len(types) > 0 && !slices.Contains(types, o.typ),
			q.Get("customer") != "" && o.customer != q.Get("customer"),
			kind == "subscription" && q.Get("status") != "all" && o.status == "canceled": // Stripe's default leaves canceled out
			continue
		}
		match = append(match, o)
	}
	if after := q.Get("starting_after"); after != "" {
		i := slices.IndexFunc(match, func(o object) bool { return o.id == after })
		if i < 0 {
			writeError(w, http.StatusBadRequest, "invalid_request_error", "resource_missing", "starting_after names no object of the list")
			return
		}
		match = match[i+1:]
	}
	hasMore := len(match) > limit
	match = match[:min(limit, len(match))]
	var b strings.Builder
	fmt.Fprintf(&b, `{"object":"list","url":%q,"has_more":%t,"data":[`, r.URL.Path, hasMore)
	for i, o := range match {
		if i > 0 {
			b.WriteString(",")
		}
		b.Write(o.raw)
	}
	b.WriteString("]}")
	writeJSON(w, []byte(b.String()))
}

func writeJSON(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Request-Id", "req_fake")
	_, _ = w.Write(body)
}

func writeError(w http.ResponseWriter, status int, typ, code, msg string) {
	body, _ := json.Marshal(map[string]any{"error": map[string]string{"type": typ, "code": code, "message": msg}})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Request-Id", "req_fake")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
