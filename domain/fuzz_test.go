package domain_test

import (
	"encoding/json"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stripe-ledger/stripe-ledger/domain"
	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

// The fuzz targets run for a few seconds each in `make test` (Makefile);
// their seeds are testdata/*.json and the corpus committed in
// testdata/fuzz/<target>.

// addSeeds adds every payload in testdata/*.json to f's corpus.
func addSeeds(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no seed payloads in testdata (%v)", err)
	}
	for _, name := range files {
		payload, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(payload)
	}
}

var (
	stripeID  = regexp.MustCompile(`^[A-Za-z0-9_]{1,255}$`)
	objectID  = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,255}$`)
	printable = regexp.MustCompile(`^[ -~]*$`)
)

// FuzzParseEnvelope: whatever the body, ParseEnvelope either refuses it
// with EINVALID or returns an envelope whose ids are Stripe ids, whose
// stream name PostgreSQL can hold, and whose created is a plausible time.
func FuzzParseEnvelope(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, payload []byte) {
		env, err := domain.ParseEnvelope(payload)
		if err != nil {
			if domain.ErrorCode(err) != domain.EINVALID {
				t.Fatalf("ParseEnvelope error %v is not EINVALID", err)
			}
			return
		}
		if !stripeID.MatchString(env.ID) {
			t.Fatalf("event id %q accepted", env.ID)
		}
		for _, id := range []string{env.Account, env.CustomerID} {
			if id != "" && !stripeID.MatchString(id) {
				t.Fatalf("id %q accepted", id)
			}
		}
		if env.ObjectID != "" && !objectID.MatchString(env.ObjectID) {
			t.Fatalf("object id %q accepted", env.ObjectID)
		}
		if !printable.MatchString(env.Type) || !printable.MatchString(env.APIVersion) || len(env.APIVersion) > domain.MaxAPIVersionBytes {
			t.Fatalf("type %q / api_version %q accepted", env.Type, env.APIVersion)
		}
		if s := env.Stream(); !utf8.ValidString(s) || strings.ContainsRune(s, 0) || len(s) > 4*domain.MaxIDBytes {
			t.Fatalf("stream %q", s)
		}
		if y := env.Created.Year(); !env.Created.IsZero() && (y < 2000 || y >= 2100) {
			t.Fatalf("created %v accepted", env.Created)
		}
	})
}

// FuzzDecodeApply: an event that ParseEnvelope accepts has the same links
// in DecodeStorableLinks' one pass as in DecodeLinks, and either fails
// DecodeStorable with EINVALID (a dead letter) or gives facts that fold
// into a state without NUL or invalid UTF-8, whose JSON renders (every time
// in range), and that applying each fact again leaves unchanged (a
// duplicate delivery changes nothing).
func FuzzDecodeApply(f *testing.F) {
	addSeeds(f)
	plans, err := domain.ParsePlans(domaintest.Plans)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		env, err := domain.ParseEnvelope(payload)
		if err != nil {
			return
		}
		fact, links, err := domain.DecodeStorableLinks(env, payload, plans)
		if want := linksOf(env, payload); !reflect.DeepEqual(links, want) {
			t.Fatalf("DecodeStorableLinks read links %+v, DecodeLinks %+v", links, want)
		}
		if err != nil {
			if domain.ErrorCode(err) != domain.EINVALID {
				t.Fatalf("DecodeStorable error %v is not EINVALID", err)
			}
			return
		}
		var s domain.CustomerState
		if fact != nil {
			s.Apply(*fact)
		}
		out, err := json.Marshal(s)
		if err != nil {
			t.Fatalf("state does not render: %v", err)
		}
		if strings.Contains(string(out), `\u0000`) || !utf8.Valid(out) {
			t.Fatalf("state holds NUL or invalid UTF-8: %s", out)
		}
		again := s
		again.Subscriptions, again.Invoices = maps.Clone(s.Subscriptions), maps.Clone(s.Invoices)
		again.Charges, again.Disputes = maps.Clone(s.Charges), maps.Clone(s.Disputes)
		if fact != nil {
			again.Apply(*fact)
		}
		if !reflect.DeepEqual(s, again) {
			t.Fatalf("applying the fact again changed the state:\n%+v\n%+v", s, again)
		}
	})
}

// linksOf is what DecodeStorableLinks must return as links.
func linksOf(env domain.Envelope, payload []byte) domain.Links {
	if !domain.HasLinks(env.Type) {
		return domain.Links{}
	}
	return domain.DecodeLinks(payload)
}

// TestDecodeStorableLinks: on every event of domaintest's lifecycles, in
// every API version they render, the one-pass decode gives DecodeStorable's
// fact and DecodeLinks' links.
func TestDecodeStorableLinks(t *testing.T) {
	t.Parallel()
	plans, err := domain.ParsePlans(domaintest.Plans)
	if err != nil {
		t.Fatal(err)
	}
	linked := 0
	for _, d := range domaintest.Lifecycles(rand.New(rand.NewPCG(9, 9)), 300) {
		env, err := domain.ParseEnvelope(d.Payload)
		if err != nil {
			t.Fatal(err)
		}
		fact, links, err := domain.DecodeStorableLinks(env, d.Payload, plans)
		want, wantErr := domain.Decode(env, d.Payload, plans)
		if !reflect.DeepEqual(fact, want) || (err == nil) != (wantErr == nil) {
			t.Fatalf("%s %s: DecodeStorableLinks gave %+v, %v; Decode %+v, %v", d.EventID, d.Type, fact, err, want, wantErr)
		}
		if wantLinks := linksOf(env, d.Payload); !reflect.DeepEqual(links, wantLinks) {
			t.Fatalf("%s %s: links %+v, DecodeLinks %+v", d.EventID, d.Type, links, wantLinks)
		}
		if len(links.Objects) > 1 {
			linked++
		}
	}
	if linked == 0 {
		t.Fatal("no event in the lifecycles links objects: the test checks nothing")
	}
}

// TestV2AccountCustomers: subscriptions and invoices that name their
// customer by customer_account alone (a v2 Account, stripe-go v84+; customer
// is null) are filed in that account's customer stream and decoded as its
// facts, like a cus_ customer's, in every API version domaintest renders.
func TestV2AccountCustomers(t *testing.T) {
	t.Parallel()
	plans, err := domain.ParsePlans(domaintest.Plans)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, d := range domaintest.Lifecycles(rand.New(rand.NewPCG(9, 9)), 300) {
		if !strings.Contains(string(d.Payload), `"customer_account":"acct_`) {
			continue
		}
		env, err := domain.ParseEnvelope(d.Payload)
		if err != nil {
			t.Fatal(err)
		}
		f, err := domain.DecodeStorable(env, d.Payload, plans)
		if err != nil {
			t.Fatalf("%s %s: %v", d.EventID, d.Type, err)
		}
		if !strings.HasPrefix(env.CustomerID, "acct_") || env.Stream() != strings.TrimPrefix(env.Account+"/", "/")+"customer-"+env.CustomerID {
			t.Fatalf("%s %s: customer %q, stream %q", d.EventID, d.Type, env.CustomerID, env.Stream())
		}
		if f != nil && (f.CustomerID != env.CustomerID || (f.Subscription == nil && f.Invoice == nil)) {
			t.Fatalf("%s %s: fact %+v, want a subscription or invoice of %s", d.EventID, d.Type, f, env.CustomerID)
		}
		seen[env.ObjectType]++
	}
	if seen["subscription"] == 0 || seen["invoice"] == 0 {
		t.Fatalf("v2 Account customers' objects decoded: %v, want subscriptions and invoices", seen)
	}
}
