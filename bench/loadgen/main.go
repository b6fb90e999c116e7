// Command loadgen measures webhook ingest of a running ledger against
// PostgreSQL's own single-row INSERT rate on the same server, in one run.
//
// It generates realistic Stripe customer lifecycles (domaintest), signs each
// delivery at send time with stripe-go's test helper, posts them to the
// ledger's webhook at a fixed concurrency over keep-alive connections, and
// reports deliveries/s, latency percentiles and status counts. Around the
// ingest (half before, half after) it runs the reference: the same number of
// clients, each inserting the same payloads one autocommit row at a time into
// a scratch table with a unique event id (what bench/pgbench_insert.sh does
// with pgbench). It prints one JSON object, ratio included.
//
//	go run ./bench/loadgen -url http://127.0.0.1:8080/stripe/webhook -concurrency 8
package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stripe/stripe-go/v76/webhook"

	"github.com/stripe-ledger/stripe-ledger/internal/domaintest"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

type config struct {
	url          string
	secret       string
	concurrency  int
	deliveries   int
	warmup       int
	seed         uint64
	referenceURL string
	referenceFor time.Duration
	ledgerPID    int
	ledgerDB     string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	var cfg config
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.StringVar(&cfg.url, "url", "http://127.0.0.1:8080/stripe/webhook", "the ledger's webhook URL")
	fs.StringVar(&cfg.secret, "secret", cmp.Or(firstSecret(os.Getenv("STRIPE_WEBHOOK_SECRET")), "whsec_development_only"),
		"webhook secret to sign with (default: the first of STRIPE_WEBHOOK_SECRET, else the development secret)")
	fs.IntVar(&cfg.concurrency, "concurrency", 8, "concurrent senders, each on its own keep-alive connection")
	fs.IntVar(&cfg.deliveries, "deliveries", 20000, "deliveries measured")
	fs.IntVar(&cfg.warmup, "warmup", 500, "deliveries sent before measuring")
	fs.Uint64Var(&cfg.seed, "seed", uint64(time.Now().UnixNano()), "seed of the generated lifecycles (event ids included)")
	fs.StringVar(&cfg.referenceURL, "reference-db", "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable",
		"PostgreSQL server for the raw INSERT reference (a scratch database is created and dropped there); empty: no reference")
	fs.DurationVar(&cfg.referenceFor, "reference-duration", 10*time.Second, "how long the reference runs, split before and after the ingest")
	fs.IntVar(&cfg.ledgerPID, "ledger-pid", 0, "process id of the ledger, to report its CPU time per delivery (same machine only)")
	fs.StringVar(&cfg.ledgerDB, "ledger-db", "", "the ledger's DATABASE_URL, to report its database backends' CPU time per delivery (same machine only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.concurrency < 1 || cfg.deliveries < 1 || cfg.warmup < 0 {
		return errors.New("-concurrency and -deliveries must be positive, -warmup not negative")
	}

	corpus := generate(cfg.seed, cfg.warmup+cfg.deliveries)
	rep := report{Concurrency: cfg.concurrency, Seed: cfg.seed, LoadAverage: []string{loadAverage()}}
	for _, p := range corpus[cfg.warmup:] {
		rep.PayloadBytesMean += float64(len(p))
	}
	rep.PayloadBytesMean /= float64(cfg.deliveries)

	var ref *reference
	if cfg.referenceURL != "" {
		var err error
		if ref, err = openReference(ctx, cfg.referenceURL); err != nil {
			return err
		}
		defer ref.close()
		if err := ref.measure(ctx, cfg.concurrency, cfg.referenceFor/2, corpus); err != nil {
			return err
		}
	}

	senders, err := newSenders(cfg)
	if err != nil {
		return err
	}
	defer func() {
		for _, s := range senders {
			s.close()
		}
	}()
	if _, err := send(ctx, senders, cfg, corpus[:cfg.warmup]); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	rep.LoadAverage = append(rep.LoadAverage, loadAverage())
	meter, err := newCPUMeter(ctx, cfg.ledgerDB, cfg.ledgerPID, false)
	if err != nil {
		return err
	}
	self0 := selfCPU()
	start := time.Now()
	results, err := send(ctx, senders, cfg, corpus[cfg.warmup:])
	if err != nil {
		return err
	}
	rep.Seconds = time.Since(start).Seconds()
	rep.LoadgenCPU = float64((selfCPU() - self0).Microseconds()) / float64(len(results))
	rep.LoadAverage = append(rep.LoadAverage, loadAverage())
	rep.summarise(results)
	if rep.CPU, err = meter.perEvent(ctx, len(results)); err != nil {
		return err
	}

	if ref != nil {
		if err := ref.measure(ctx, cfg.concurrency, cfg.referenceFor/2, corpus); err != nil {
			return err
		}
		rep.Reference = ref.report()
		rep.Ratio = rep.DeliveriesPerSecond / rep.Reference.InsertsPerSecond
		switch {
		case rep.CPU == nil:
		case rep.CPU.Database == 0 || rep.Reference.CPU.Database == 0:
			// Backends this process cannot see (another host, a container):
			// a ratio against the client's CPU alone would mean nothing.
			fmt.Fprintln(os.Stderr, "loadgen: no CPU time read for the database backends (is PostgreSQL on this machine?): no cpu_ratio_to_reference")
		default:
			rep.CPURatio = rep.Reference.CPU.Total / rep.CPU.Total
		}
		rep.LoadAverage = append(rep.LoadAverage, loadAverage())
	}
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// generate returns n payloads of domaintest lifecycles, in created order.
func generate(seed uint64, n int) [][]byte {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var out [][]byte
	for len(out) < n {
		for _, d := range domaintest.Lifecycles(rng, 100) {
			out = append(out, d.Payload)
		}
	}
	return out[:n]
}

// result is one delivery's outcome: its HTTP status (0 when the request
// failed) and how long the answer took.
type result struct {
	status  int
	latency time.Duration
}

// send posts payloads in order from the senders, each signing its
// delivery just before sending it.
func send(ctx context.Context, senders []*sender, cfg config, payloads [][]byte) ([]result, error) {
	results := make([]result, len(payloads))
	var next atomic.Int64
	var wg sync.WaitGroup
	for _, s := range senders {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(payloads) && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				results[i] = s.post(cfg.secret, payloads[i])
			}
		})
	}
	wg.Wait()
	return results, ctx.Err()
}

// sender posts deliveries one at a time over its own keep-alive
// connection. It writes each request in one write and reads the answer with
// net/http's parser, in the calling goroutine: http.Transport's two
// goroutines per connection, and the hand-offs between them and the caller,
// cost this process about as much CPU per delivery as the ledger's webhook
// handler, on the cores the ledger and PostgreSQL are measured on.
type sender struct {
	addr string // host:port
	head string // the request line and the headers every delivery shares
	conn net.Conn
	r    *bufio.Reader
	req  []byte // the request being written, reused
}

// sendTimeout bounds one delivery, as a client timeout would.
const sendTimeout = 30 * time.Second

func newSenders(cfg config) ([]*sender, error) {
	u, err := url.Parse(cfg.url)
	if err != nil {
		return nil, fmt.Errorf("-url: %w", err)
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("-url must be an http:// URL, not %q", cfg.url)
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	head := "POST " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host + "\r\nUser-Agent: loadgen\r\nContent-Type: application/json\r\n"
	senders := make([]*sender, cfg.concurrency)
	for i := range senders {
		senders[i] = &sender{addr: addr, head: head}
	}
	return senders, nil
}

// post signs payload now and delivers it; status 0 when no answer came. A
// request that fails on a connection kept from an earlier delivery (the
// ledger closed it meanwhile) is sent once more on a new one.
func (s *sender) post(secret string, payload []byte) result {
	signed := webhook.GenerateTestSignedPayload(&webhook.UnsignedPayload{Payload: payload, Secret: secret, Timestamp: time.Now()})
	start := time.Now()
	s.req = append(s.req[:0], s.head...)
	s.req = append(s.req, "Stripe-Signature: "...)
	s.req = append(s.req, signed.Header...)
	s.req = append(s.req, "\r\nContent-Length: "...)
	s.req = strconv.AppendInt(s.req, int64(len(payload)), 10)
	s.req = append(s.req, "\r\n\r\n"...)
	s.req = append(s.req, payload...)
	reused := s.conn != nil
	status, err := s.roundTrip()
	if err != nil && reused {
		s.close()
		status, err = s.roundTrip()
	}
	if err != nil {
		s.close()
		return result{latency: time.Since(start)}
	}
	return result{status: status, latency: time.Since(start)}
}

// roundTrip writes s.req and reads the answer to the end, dialling first
// when s has no connection.
func (s *sender) roundTrip() (int, error) {
	if s.conn == nil {
		conn, err := net.DialTimeout("tcp", s.addr, sendTimeout)
		if err != nil {
			return 0, err
		}
		s.conn, s.r = conn, bufio.NewReader(conn)
	}
	if err := s.conn.SetDeadline(time.Now().Add(sendTimeout)); err != nil {
		return 0, err
	}
	if _, err := s.conn.Write(s.req); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(s.r, nil)
	if err != nil {
		return 0, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		return 0, err
	}
	if resp.Close {
		s.close()
	}
	return resp.StatusCode, nil
}

// close closes the connection; the next post dials a new one.
func (s *sender) close() {
	if s.conn != nil {
		_ = s.conn.Close()
		s.conn = nil
	}
}

type report struct {
	Concurrency         int              `json:"concurrency"`
	Deliveries          int              `json:"deliveries"`
	Seconds             float64          `json:"seconds"`
	DeliveriesPerSecond float64          `json:"deliveries_per_second"`
	LatencyMS           latencies        `json:"latency_ms"`
	Status              map[string]int   `json:"status"` // by HTTP status; "error" when no answer came
	PayloadBytesMean    float64          `json:"payload_bytes_mean"`
	Reference           *referenceReport `json:"reference,omitempty"`
	Ratio               float64          `json:"ratio_to_reference,omitempty"`
	// CPU time per delivery of the ledger process and its database backends
	// (when -ledger-pid / -ledger-db are given), and the reference's CPU per
	// insert divided by it: what the throughput ratio would be on an idle
	// machine where both are CPU-bound, which a shared machine's load does not move.
	CPU      *cpuReport `json:"cpu_us_per_delivery,omitempty"`
	CPURatio float64    `json:"cpu_ratio_to_reference,omitempty"`
	// This process's own CPU time per delivery while it sends (signing,
	// HTTP): not the ledger's, but spent on the same machine.
	LoadgenCPU float64 `json:"loadgen_cpu_us_per_delivery"`
	Seed       uint64  `json:"seed"`
	// /proc/loadavg before the reference, before and after the ingest, after the second reference.
	LoadAverage []string `json:"load_average"`
}

type latencies struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func (r *report) summarise(results []result) {
	r.Deliveries = len(results)
	r.DeliveriesPerSecond = float64(len(results)) / r.Seconds
	r.Status = map[string]int{}
	ds := make([]time.Duration, len(results))
	for i, res := range results {
		ds[i] = res.latency
		if res.status == 0 {
			r.Status["error"]++
		} else {
			r.Status[strconv.Itoa(res.status)]++
		}
	}
	slices.Sort(ds)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	r.LatencyMS = latencies{P50: ms(ds[len(ds)/2]), P99: ms(ds[len(ds)*99/100]), Max: ms(ds[len(ds)-1])}
}

// reference measures single-row autocommit INSERTs into a scratch database.
type reference struct {
	admin    *pgx.Conn
	url      string // of the scratch database
	name     string
	inserted int64
	elapsed  time.Duration
	runs     []float64
	cpu      cpuReport // summed over the runs, in µs
}

type referenceReport struct {
	InsertsPerSecond float64   `json:"inserts_per_second"` // over both runs
	Runs             []float64 `json:"runs_inserts_per_second"`
	CPU              cpuReport `json:"cpu_us_per_insert"` // client: this process's insert loop
}

func openReference(ctx context.Context, serverURL string) (*reference, error) {
	admin, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return nil, fmt.Errorf("reference: connect: %w", err)
	}
	r := &reference{admin: admin, name: fmt.Sprintf("loadgen_reference_%d", os.Getpid())}
	u, err := url.Parse(serverURL)
	if err != nil {
		admin.Close(ctx)
		return nil, fmt.Errorf("reference: %w", err)
	}
	u.Path = "/" + r.name
	r.url = u.String()
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+r.name); err != nil {
		admin.Close(ctx)
		return nil, fmt.Errorf("reference: %w", err)
	}
	conn, err := pgx.Connect(ctx, r.url)
	if err == nil {
		_, err = conn.Exec(ctx, `CREATE TABLE t (id bigserial PRIMARY KEY, event_id text UNIQUE, payload bytea)`)
		conn.Close(ctx)
	}
	if err != nil {
		r.close()
		return nil, fmt.Errorf("reference: %w", err)
	}
	return r, nil
}

// measure inserts payloads (cycled) from clients connections for d.
func (r *reference) measure(ctx context.Context, clients int, d time.Duration, payloads [][]byte) error {
	conns := make([]*pgx.Conn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(ctx)
			}
		}
	}()
	for i := range conns {
		c, err := pgx.Connect(ctx, r.url)
		if err != nil {
			return fmt.Errorf("reference: connect: %w", err)
		}
		conns[i] = c
	}
	var (
		n      atomic.Int64
		wg     sync.WaitGroup
		failed atomic.Pointer[error]
	)
	run := len(r.runs)
	meter, err := newCPUMeter(ctx, r.url, 0, true)
	if err != nil {
		return err
	}
	start := time.Now()
	deadline := start.Add(d)
	for i, c := range conns {
		wg.Go(func() {
			// The clients stop at the deadline between two inserts, never
			// by cancelling one: pgx closes a connection whose query is
			// cancelled, its backend exits, and the CPU it used would not
			// be read at the end (the reference measured 0 µs in the
			// database at concurrency 8).
			for j := i; time.Now().Before(deadline); j += clients {
				id := fmt.Sprintf("evt_ref_%d_%d_%d", run, i, j)
				if _, err := c.Exec(ctx, `INSERT INTO t (event_id, payload) VALUES ($1, $2)`, id, payloads[j%len(payloads)]); err != nil {
					if ctx.Err() == nil {
						failed.Store(&err)
					}
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := failed.Load(); err != nil {
		return fmt.Errorf("reference insert: %w", *err)
	}
	cpu, err := meter.perEvent(ctx, 1)
	if err != nil {
		return err
	}
	r.cpu.Process, r.cpu.Database = r.cpu.Process+cpu.Process, r.cpu.Database+cpu.Database
	r.inserted += n.Load()
	r.elapsed += elapsed
	r.runs = append(r.runs, float64(n.Load())/elapsed.Seconds())
	return nil
}

func (r *reference) report() *referenceReport {
	n := float64(r.inserted)
	cpu := cpuReport{Process: r.cpu.Process / n, Database: r.cpu.Database / n}
	cpu.Total = cpu.Process + cpu.Database
	return &referenceReport{InsertsPerSecond: n / r.elapsed.Seconds(), Runs: r.runs, CPU: cpu}
}

type cpuReport struct {
	Process  float64 `json:"process"` // the ledger, or the reference's client
	Database float64 `json:"database"`
	Total    float64 `json:"total"`
}

// cpuMeter measures the CPU time a process and the backends of a database
// use from its creation to perEvent (Linux /proc; the server on this machine).
type cpuMeter struct {
	dbURL string
	pid   int  // 0: none
	self  bool // this process, by getrusage
	start map[int]time.Duration
	self0 time.Duration
}

// newCPUMeter starts measuring; with neither dbURL, pid nor self it measures nothing.
func newCPUMeter(ctx context.Context, dbURL string, pid int, self bool) (*cpuMeter, error) {
	m := &cpuMeter{dbURL: dbURL, pid: pid, self: self}
	var err error
	if m.start, err = m.sample(ctx); err != nil {
		return nil, err
	}
	m.self0 = selfCPU()
	return m, nil
}

// perEvent reports the CPU used since the meter started, in µs per event
// (the totals with events = 1); nil when it measures nothing.
func (m *cpuMeter) perEvent(ctx context.Context, events int) (*cpuReport, error) {
	if m.dbURL == "" && m.pid == 0 && !m.self {
		return nil, nil
	}
	end, err := m.sample(ctx)
	if err != nil {
		return nil, err
	}
	var rep cpuReport
	for pid, t := range end {
		used := float64((t - m.start[pid]).Microseconds()) / float64(events)
		if pid == m.pid {
			rep.Process += used
		} else {
			rep.Database += used
		}
	}
	if m.self {
		rep.Process += float64((selfCPU() - m.self0).Microseconds()) / float64(events)
	}
	rep.Total = rep.Process + rep.Database
	return &rep, nil
}

// sample reads the CPU time of m.pid and of the database's backends.
func (m *cpuMeter) sample(ctx context.Context) (map[int]time.Duration, error) {
	pids := []int{}
	if m.pid != 0 {
		pids = append(pids, m.pid)
	}
	if m.dbURL != "" {
		conn, err := pgx.Connect(ctx, m.dbURL)
		if err != nil {
			return nil, fmt.Errorf("cpu: connect: %w", err)
		}
		rows, err := conn.Query(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
		var backends []int32
		if err == nil {
			backends, err = pgx.CollectRows(rows, pgx.RowTo[int32])
		}
		conn.Close(ctx)
		if err != nil {
			return nil, fmt.Errorf("cpu: list backends: %w", err)
		}
		for _, pid := range backends {
			pids = append(pids, int(pid))
		}
	}
	times := make(map[int]time.Duration, len(pids))
	for _, pid := range pids {
		if t, ok := processCPU(pid); ok {
			times[pid] = t
		}
	}
	return times, nil
}

// processCPU is a process's user+system time from /proc/<pid>/stat.
func processCPU(pid int) (time.Duration, bool) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// utime and stime are fields 14 and 15, counted after the ")" that ends the command name.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 13 {
		return 0, false
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / clockTicks, true
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on every Linux platform Go runs on.
const clockTicks = 100

func selfCPU() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

func (r *reference) close() {
	ctx := context.Background()
	if _, err := r.admin.Exec(ctx, "DROP DATABASE IF EXISTS "+r.name+" WITH (FORCE)"); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen: drop the reference database:", err)
	}
	r.admin.Close(ctx)
}

func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func firstSecret(list string) string {
	first, _, _ := strings.Cut(list, ",")
	return strings.TrimSpace(first)
}
