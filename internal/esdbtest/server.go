// Package esdbtest is an in-process test double of a single EventStoreDB /
// KurrentDB node, serving the client module's own generated gRPC interfaces
// (event_store.client.streams.Streams and ServerFeatures) on a loopback port
// without TLS, so that EventStore-Client-Go/v4 connects to it with
// esdb://127.0.0.1:PORT?tls=false exactly as it would to a real server.
//
// It models the documented behaviour the ledger relies on: expected-revision
// checks (any, no_stream, stream_exists, exact), KurrentDB's idempotency
// rules (an append of the same event ids expecting the revision they were
// first written after is a success that writes nothing; the same ids
// expecting a later revision are new records), the maximum append size
// (MaxAppendSize, over the proposed messages' encoded size), (commit,
// prepare) positions in one $all log, stream and $all reads forwards and
// backwards, stream-name and event-type filters (prefix or regex), catch-up
// subscriptions with a confirmation, checkpoints every max-search-window ×
// multiplier scanned events, a caught-up message and then live delivery, the
// system metadata (type, content-type, created) the client requires on every
// event, the server version reported through ServerFeatures, tombstoned
// streams (a $streamDeleted record in $all; appends and reads of the stream
// fail with the stream-deleted exception), and the not-leader, aborted and
// access-denied failures.
//
// Deliberate differences from a real server: an append expecting any
// revision is recognised as a retry from the whole stream (a real node
// remembers recent event ids only, in a cache that restarts empty), and
// Delete and BatchAppend are unimplemented.
//
// Fault hooks: DropSubscriptions ends every live subscription with an error
// mid-stream; Stop takes the node down (calls fail with Unavailable) and
// Start brings it back on the same address with its data intact; HoldAppend
// keeps an append in flight until the test lets it land; FailAppends,
// DenyAll, Tombstone and SendBadCheckpoints inject the server's failures;
// LeaderlessCalls and EventsSent report what the client asked for.
package esdbtest

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/serverfeatures"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/shared"
	"github.com/EventStore/EventStore-Client-Go/v4/protos/streams"
	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Version is the server version the double reports through ServerFeatures
// unless WithVersion sets another.
const Version = "25.0.1"

// MaxAppendSize is the largest append the double accepts: the sum of the
// encoded sizes of its proposed messages (data, metadata, id), as KurrentDB's
// default MaxAppendSize of 1 MiB counts it.
const MaxAppendSize = 1 << 20

// firstPosition is where the double's $all begins. A real node's log starts
// with its own system records, so no client event is ever at 0/0 (the
// position clients use for "before everything").
const firstPosition = 4096

// defaultSearchWindow is the server's max search window when a filter sets none.
const defaultSearchWindow = 32

// Server is one in-memory node. Its zero value is not usable; use New.
type Server struct {
	addr    string
	version string

	mu         sync.Mutex
	grpc       *grpc.Server // nil while stopped
	all        []*record    // $all, in position order
	streams    map[string][]*record
	tombstoned map[string]bool
	next       uint64        // position of the next record
	appended   chan struct{} // closed and replaced on every append
	subs       map[int]context.CancelCauseFunc
	nextSub    int

	// Fault injection and observation, see the package documentation.
	holds          map[string]*Hold // stream → the hold its next append meets
	afterRead      map[string]func()
	failAppends    []codes.Code
	denyAll        bool
	badCheckpoints bool
	leaderless     int
	eventsSent     map[string]int // "$all" for reads and subscriptions of $all
}

type record struct {
	id       uuid.UUID
	stream   string
	revision uint64
	position uint64 // commit and prepare: the double never writes transactions
	metadata map[string]string
	custom   []byte
	data     []byte
}

// Option configures a Server.
type Option func(*Server)

// WithVersion makes the double report version (major.minor.patch) through ServerFeatures.
func WithVersion(version string) Option { return func(s *Server) { s.version = version } }

// errDropped is the cause DropSubscriptions gives the subscriptions it ends.
var errDropped = errors.New("subscription dropped by the test")

// New starts a node on a free loopback port and stops it when the test ends.
func New(tb testing.TB, opts ...Option) *Server {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("esdbtest: listen: %v", err)
	}
	s := &Server{
		addr:       lis.Addr().String(),
		version:    Version,
		streams:    map[string][]*record{},
		tombstoned: map[string]bool{},
		next:       firstPosition,
		appended:   make(chan struct{}),
		subs:       map[int]context.CancelCauseFunc{},
		holds:      map[string]*Hold{},
		afterRead:  map[string]func(){},
		eventsSent: map[string]int{},
	}
	for _, opt := range opts {
		opt(s)
	}
	s.serve(lis)
	tb.Cleanup(s.Stop)
	return s
}

// URL is the connection string for EventStore-Client-Go.
func (s *Server) URL() string { return "esdb://" + s.addr + "?tls=false" }

// Stop takes the node down: open connections are closed, active calls and
// subscriptions fail with Unavailable and new ones cannot connect. The data
// survives for Start. Stopping a stopped node does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	g := s.grpc
	s.grpc = nil
	s.mu.Unlock()
	if g != nil {
		g.Stop()
	}
}

// Start brings a stopped node back on its address.
func (s *Server) Start(tb testing.TB) {
	tb.Helper()
	lis, err := net.Listen("tcp", s.addr)
	if err != nil {
		tb.Fatalf("esdbtest: listen again on %s: %v", s.addr, err)
	}
	s.serve(lis)
}

func (s *Server) serve(lis net.Listener) {
	// Like a node, accept the client's keepalive pings (every 10s by
	// default, also between calls); gRPC's default policy answers them with
	// GOAWAY too_many_pings, which drops live subscriptions.
	g := grpc.NewServer(grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
		MinTime:             time.Second,
		PermitWithoutStream: true,
	}))
	streams.RegisterStreamsServer(g, &streamsService{s: s})
	serverfeatures.RegisterServerFeaturesServer(g, featuresService{version: s.version})
	s.mu.Lock()
	s.grpc = g
	s.mu.Unlock()
	go func() { _ = g.Serve(lis) }() // returns when Stop closes the listener
}

// DropSubscriptions ends every active subscription with an Unavailable error,
// as a node does when it drops a subscriber, and reports how many it ended.
func (s *Server) DropSubscriptions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, cancel := range s.subs {
		cancel(errDropped)
	}
	n := len(s.subs)
	clear(s.subs)
	return n
}

// Subscriptions is the number of active subscriptions.
func (s *Server) Subscriptions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs)
}

// StreamLength is the number of events stored in stream.
func (s *Server) StreamLength(stream string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.streams[stream])
}

// StreamLengthEndingWith is the number of events stored in the streams whose
// names end with suffix: a ledger stream under whatever prefix its Log uses.
func (s *Server) StreamLengthEndingWith(suffix string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for name, events := range s.streams {
		if strings.HasSuffix(name, suffix) {
			n += len(events)
		}
	}
	return n
}

// AppendForeign appends n events of another application (stream
// "orders-42") through the real client: events in $all that are not the
// ledger's, which filtered subscriptions skip with checkpoints.
func (s *Server) AppendForeign(tb testing.TB, n int) {
	tb.Helper()
	s.AppendForeignTo(tb, "orders-42", n)
}

// AppendForeignTo appends n JSON events of another application to stream
// through the real client, with metadata that is not the ledger's.
func (s *Server) AppendForeignTo(tb testing.TB, stream string, n int) {
	tb.Helper()
	cfg, err := esdb.ParseConnectionString(s.URL())
	if err != nil {
		tb.Fatal(err)
	}
	cfg.Logger = esdb.NoopLogging()
	client, err := esdb.NewClient(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	defer client.Close()
	for n > 0 {
		batch := make([]esdb.EventData, min(n, 500))
		for i := range batch {
			batch[i] = esdb.EventData{EventType: "OrderPlaced", ContentType: esdb.ContentTypeJson,
				Data: []byte(`{"order":42}`), Metadata: []byte(`{"app":"orders"}`)}
		}
		if _, err := client.AppendToStream(tb.Context(), stream, esdb.AppendToStreamOptions{}, batch...); err != nil {
			tb.Fatalf("append foreign events to %s: %v", stream, err)
		}
		n -= len(batch)
	}
}

// Hold is an append the double keeps in flight (see HoldAppend).
type Hold struct {
	arrived  chan struct{} // closed when the append reaches the hold
	released chan struct{} // closed by Release
	landed   chan struct{} // closed once the held append is applied (or refused)
}

// HoldAppend makes the next append to stream wait, fully received but not
// yet applied, until Release: an append whose client gave up and that lands
// later, as a node's does when its write is already in the pipeline.
func (s *Server) HoldAppend(stream string) *Hold {
	h := &Hold{arrived: make(chan struct{}), released: make(chan struct{}), landed: make(chan struct{})}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holds[stream] = h
	return h
}

// Arrived is closed once the held append has reached the double.
func (h *Hold) Arrived() <-chan struct{} { return h.arrived }

// Release lets the held append land, whatever became of its client, and
// waits until it has been applied (or refused: its expected revision is
// checked when it lands).
func (h *Hold) Release() {
	close(h.released)
	<-h.landed
}

// AfterNextRead runs f after the double has sent the events of the next
// counted read of stream and before it ends the read, so the reader sees
// f's effects only in its later calls.
func (s *Server) AfterNextRead(stream string, f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.afterRead[stream] = f
}

// FailAppends makes the next appends fail with the given gRPC codes, one
// each, without writing: codes.Aborted is how a node reports a write that
// timed out before it was replicated, or a forward to the leader that timed
// out.
func (s *Server) FailAppends(code ...codes.Code) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failAppends = append(s.failAppends, code...)
}

// DenyAll makes reads and subscriptions of $all fail with PermissionDenied,
// as a secure node does for a user outside $admins.
func (s *Server) DenyAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.denyAll = true
}

// Tombstone hard-deletes stream: a $streamDeleted record appears in $all,
// and every later append or read of the stream fails with stream-deleted.
func (s *Server) Tombstone(stream string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tombstoned[stream] = true
	s.writeLocked(stream, []*record{{
		id:       uuid.New(),
		metadata: map[string]string{"type": "$streamDeleted", "content-type": "application/octet-stream"},
	}})
	s.all[len(s.all)-1].revision = math.MaxInt64 // a tombstone's revision
}

// SendBadCheckpoints makes filtered subscriptions send, each time they have
// sent what is stored, the checkpoints of unpatched servers: one at
// (2^64-1, 2^64-1) (KurrentDB #4892) and one at the end of the log they
// reached, past its last record: where the next record will be written
// (#4975).
func (s *Server) SendBadCheckpoints() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.badCheckpoints = true
}

// LeaderlessCalls is the number of calls that arrived without the
// requires-leader header, which a follower would have served from its
// possibly stale copy.
func (s *Server) LeaderlessCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leaderless
}

// EventsSent is the number of events the double has sent to clients from
// stream, by reads and subscriptions ("$all" for those of $all).
func (s *Server) EventsSent(stream string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.eventsSent[stream]
}

// leaderCheck counts a call that lacks the requires-leader header.
func (s *Server) leaderCheck(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("requires-leader"); len(v) == 0 || v[0] != "true" {
		s.mu.Lock()
		s.leaderless++
		s.mu.Unlock()
	}
}

// streamDeleted is the error of a call on a tombstoned stream, with the
// trailers the client turns into ErrorCodeStreamDeleted.
func streamDeleted(ctx context.Context, stream string) error {
	_ = grpc.SetTrailer(ctx, metadata.Pairs("exception", "stream-deleted", "stream-name", stream))
	return status.Errorf(codes.FailedPrecondition, "Event stream '%s' is deleted.", stream)
}

type featuresService struct {
	serverfeatures.UnimplementedServerFeaturesServer
	version string
}

func (f featuresService) GetSupportedMethods(context.Context, *shared.Empty) (*serverfeatures.SupportedMethods, error) {
	const svc = "event_store.client.streams.streams"
	return &serverfeatures.SupportedMethods{
		EventStoreServerVersion: f.version,
		Methods: []*serverfeatures.SupportedMethod{
			{ServiceName: svc, MethodName: "read"},
			{ServiceName: svc, MethodName: "append"},
		},
	}, nil
}

type streamsService struct {
	streams.UnimplementedStreamsServer
	s *Server
}

// Append implements the client-streaming append: options first, then the
// proposed events, checked and written atomically.
func (svc *streamsService) Append(srv streams.Streams_AppendServer) error {
	first, err := srv.Recv()
	if err != nil {
		return err
	}
	opts := first.GetOptions()
	if opts == nil {
		return status.Error(codes.InvalidArgument, "the first append message must carry options")
	}
	svc.s.leaderCheck(srv.Context())
	stream := string(opts.GetStreamIdentifier().GetStreamName())
	var (
		proposed []*record
		size     int
	)
	for {
		req, err := srv.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		msg := req.GetProposedMessage()
		if msg == nil {
			return status.Error(codes.InvalidArgument, "expected a proposed message")
		}
		if size += proto.Size(msg); size > MaxAppendSize {
			_ = grpc.SetTrailer(srv.Context(), metadata.Pairs("exception", "maximum-append-size-exceeded",
				"maximum-append-size", strconv.Itoa(MaxAppendSize)))
			return status.Errorf(codes.InvalidArgument, "Maximum Append Size of %d Exceeded.", MaxAppendSize)
		}
		rec, err := proposedRecord(msg)
		if err != nil {
			return err
		}
		proposed = append(proposed, rec)
	}
	svc.s.mu.Lock()
	hold := svc.s.holds[stream]
	delete(svc.s.holds, stream)
	svc.s.mu.Unlock()
	if hold != nil {
		close(hold.arrived)
		<-hold.released // whatever became of the client: the write is in the pipeline
		defer close(hold.landed)
	}
	resp, err := svc.s.append(srv.Context(), stream, opts, proposed)
	if err != nil {
		return err
	}
	return srv.SendAndClose(resp)
}

func proposedRecord(msg *streams.AppendReq_ProposedMessage) (*record, error) {
	id, err := fromProtoUUID(msg.GetId())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "event id: %v", err)
	}
	md := msg.GetMetadata()
	for _, key := range []string{"type", "content-type"} {
		if _, ok := md[key]; !ok {
			return nil, status.Errorf(codes.InvalidArgument, "Required Metadata Property '%s' is missing", key)
		}
	}
	return &record{
		id:       id,
		metadata: map[string]string{"type": md["type"], "content-type": md["content-type"]},
		custom:   msg.GetCustomMetadata(),
		data:     msg.GetData(),
	}, nil
}

// append checks the expected revision, recognises an idempotent retry, and
// writes the events at the end of stream and of $all.
func (s *Server) append(ctx context.Context, stream string, opts *streams.AppendReq_Options, events []*record) (*streams.AppendResp, error) {
	if stream == "" {
		return nil, status.Error(codes.InvalidArgument, "stream name is empty")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failAppends) > 0 {
		code := s.failAppends[0]
		s.failAppends = s.failAppends[1:]
		return nil, status.Errorf(code, "append to %s failed by the test", stream)
	}
	if s.tombstoned[stream] {
		return nil, streamDeleted(ctx, stream)
	}
	existing := s.streams[stream]
	current := int64(len(existing)) - 1 // -1: no stream

	var expected int64
	switch e := opts.GetExpectedStreamRevision().(type) {
	case *streams.AppendReq_Options_Revision:
		expected = int64(e.Revision)
	case *streams.AppendReq_Options_NoStream:
		expected = -1
	case *streams.AppendReq_Options_StreamExists:
		if current < 0 {
			return wrongExpectedVersion(opts, current), nil
		}
		expected = current
	default: // any
		if at := indexOfRun(existing, events); at >= 0 {
			return success(existing[at+len(events)-1]), nil
		}
		expected = current
	}
	if expected != current {
		// A retry of a write that already happened at this place is a success, not a conflict.
		if at := indexOfRun(existing, events); at >= 0 && int64(at) == expected+1 {
			return success(existing[at+len(events)-1]), nil
		}
		return wrongExpectedVersion(opts, current), nil
	}
	if len(events) == 0 {
		resp := &streams.AppendResp_Success{PositionOption: &streams.AppendResp_Success_NoPosition{NoPosition: &shared.Empty{}}}
		if current < 0 {
			resp.CurrentRevisionOption = &streams.AppendResp_Success_NoStream{NoStream: &shared.Empty{}}
		} else {
			resp.CurrentRevisionOption = &streams.AppendResp_Success_CurrentRevision{CurrentRevision: uint64(current)}
		}
		return &streams.AppendResp{Result: &streams.AppendResp_Success_{Success: resp}}, nil
	}
	s.writeLocked(stream, events)
	s.streams[stream] = append(s.streams[stream], events...)
	return success(events[len(events)-1]), nil
}

// writeLocked places events at the end of $all, numbered as the next
// revisions of stream, and wakes the subscriptions; the caller holds s.mu
// and adds them to the stream.
func (s *Server) writeLocked(stream string, events []*record) {
	now := strconv.FormatInt(time.Now().UnixNano()/100, 10) // .NET ticks since the Unix epoch
	for i, e := range events {
		e.stream = stream
		e.revision = uint64(len(s.streams[stream]) + i)
		e.position = s.next
		e.metadata["created"] = now
		s.next += uint64(128 + len(stream) + len(e.data) + len(e.custom)) // records have a size in the log
		s.all = append(s.all, e)
	}
	close(s.appended)
	s.appended = make(chan struct{})
}

// indexOfRun is where events' ids occur, consecutively and in order, in
// existing; -1 when they do not.
func indexOfRun(existing, events []*record) int {
	if len(events) == 0 {
		return -1
	}
	for i, r := range existing {
		if r.id != events[0].id || i+len(events) > len(existing) {
			continue
		}
		match := true
		for j, e := range events {
			match = match && existing[i+j].id == e.id
		}
		if match {
			return i
		}
	}
	return -1
}

func success(last *record) *streams.AppendResp {
	return &streams.AppendResp{Result: &streams.AppendResp_Success_{Success: &streams.AppendResp_Success{
		CurrentRevisionOption: &streams.AppendResp_Success_CurrentRevision{CurrentRevision: last.revision},
		PositionOption: &streams.AppendResp_Success_Position{Position: &streams.AppendResp_Position{
			CommitPosition: last.position, PreparePosition: last.position,
		}},
	}}}
}

func wrongExpectedVersion(opts *streams.AppendReq_Options, current int64) *streams.AppendResp {
	w := &streams.AppendResp_WrongExpectedVersion{}
	if current < 0 {
		w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentNoStream{CurrentNoStream: &shared.Empty{}}
		w.CurrentRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_NoStream_20_6_0{NoStream_20_6_0: &shared.Empty{}}
	} else {
		w.CurrentRevisionOption = &streams.AppendResp_WrongExpectedVersion_CurrentRevision{CurrentRevision: uint64(current)}
		w.CurrentRevisionOption_20_6_0 = &streams.AppendResp_WrongExpectedVersion_CurrentRevision_20_6_0{CurrentRevision_20_6_0: uint64(current)}
	}
	switch e := opts.GetExpectedStreamRevision().(type) {
	case *streams.AppendReq_Options_Revision:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedRevision{ExpectedRevision: e.Revision}
	case *streams.AppendReq_Options_NoStream:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedNoStream{ExpectedNoStream: &shared.Empty{}}
	case *streams.AppendReq_Options_StreamExists:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedStreamExists{ExpectedStreamExists: &shared.Empty{}}
	default:
		w.ExpectedRevisionOption = &streams.AppendResp_WrongExpectedVersion_ExpectedAny{ExpectedAny: &shared.Empty{}}
	}
	return &streams.AppendResp{Result: &streams.AppendResp_WrongExpectedVersion_{WrongExpectedVersion: w}}
}

// Read serves both reads (a count) and subscriptions, of a stream or of $all.
func (svc *streamsService) Read(req *streams.ReadReq, srv streams.Streams_ReadServer) error {
	opts := req.GetOptions()
	if opts == nil {
		return status.Error(codes.InvalidArgument, "read options are missing")
	}
	match, err := newFilter(opts.GetFilter())
	if err != nil {
		return err
	}
	structured := opts.GetUuidOption().GetString_() == nil
	svc.s.leaderCheck(srv.Context())
	name := "$all"
	if so := opts.GetStream(); so != nil {
		name = string(so.GetStreamIdentifier().GetStreamName())
	}
	svc.s.mu.Lock()
	denied, deleted := name == "$all" && svc.s.denyAll, svc.s.tombstoned[name]
	svc.s.mu.Unlock()
	switch {
	case denied:
		return status.Error(codes.PermissionDenied, "Access denied")
	case deleted:
		return streamDeleted(srv.Context(), name)
	}
	if opts.GetSubscription() != nil {
		return svc.s.subscribe(srv, opts, name, match, structured)
	}
	events := svc.s.read(opts, match)
	for _, r := range events {
		if err := srv.Send(eventResp(r, structured)); err != nil {
			return err
		}
	}
	svc.s.mu.Lock()
	svc.s.eventsSent[name] += len(events)
	after := svc.s.afterRead[name]
	delete(svc.s.afterRead, name)
	svc.s.mu.Unlock()
	if after != nil {
		after()
	}
	if name, ok := svc.s.missingStream(opts); ok {
		return srv.Send(&streams.ReadResp{Content: &streams.ReadResp_StreamNotFound_{StreamNotFound: &streams.ReadResp_StreamNotFound{
			StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(name)},
		}}})
	}
	return nil
}

// missingStream reports a stream read of a stream that does not exist.
func (s *Server) missingStream(opts *streams.ReadReq_Options) (string, bool) {
	so := opts.GetStream()
	if so == nil {
		return "", false
	}
	name := string(so.GetStreamIdentifier().GetStreamName())
	s.mu.Lock()
	defer s.mu.Unlock()
	return name, len(s.streams[name]) == 0
}

// read returns the events a counted read selects.
func (s *Server) read(opts *streams.ReadReq_Options, match filter) []*record {
	s.mu.Lock()
	defer s.mu.Unlock()
	backwards := opts.GetReadDirection() == streams.ReadReq_Options_Backwards
	var (
		src                []*record
		fromStart, fromEnd bool
		at                 int // index of the first event the read considers, walking in its direction
	)
	if so := opts.GetStream(); so != nil {
		src = s.streams[string(so.GetStreamIdentifier().GetStreamName())]
		fromStart, fromEnd = so.GetStart() != nil, so.GetEnd() != nil
		at = int(so.GetRevision()) // both directions include the event at the revision
		if backwards {
			at = min(at, len(src)-1)
		}
	} else {
		src = s.all
		fromStart, fromEnd = opts.GetAll().GetStart() != nil, opts.GetAll().GetEnd() != nil
		// Forwards from a position includes the event at it; backwards returns the events before it.
		at = s.firstAtOrAfter(opts.GetAll().GetPosition().GetCommitPosition())
		if backwards {
			at--
		}
	}
	switch {
	case fromStart && backwards:
		at = -1 // nothing comes before the start
	case fromStart:
		at = 0
	case fromEnd && backwards:
		at = len(src) - 1
	case fromEnd:
		at = len(src)
	}
	step := 1
	if backwards {
		step = -1
	}
	var out []*record
	for i := at; i >= 0 && i < len(src) && uint64(len(out)) < opts.GetCount(); i += step {
		if match(src[i]) {
			out = append(out, src[i])
		}
	}
	return out
}

// firstAtOrAfter is the index in $all of the first event at or after position pos.
func (s *Server) firstAtOrAfter(pos uint64) int {
	return sort.Search(len(s.all), func(i int) bool { return s.all[i].position >= pos })
}

// subscribe confirms the subscription, then sends the matching events after
// its starting point (catch-up), a caught-up message, and every new matching
// event as it is appended (live), with checkpoints when filtered.
func (s *Server) subscribe(srv streams.Streams_ReadServer, opts *streams.ReadReq_Options, name string, match filter, structured bool) error {
	ctx, cancel := context.WithCancelCause(srv.Context())
	defer cancel(nil)
	s.mu.Lock()
	id := s.nextSub
	s.nextSub++
	s.subs[id] = cancel
	src := func() []*record { return s.all }
	var cursor int
	if so := opts.GetStream(); so != nil {
		src = func() []*record { return s.streams[name] }
		switch {
		case so.GetStart() != nil:
		case so.GetEnd() != nil:
			cursor = len(s.streams[name])
		default:
			cursor = int(so.GetRevision()) + 1 // subscriptions start after the given revision
		}
	} else {
		ao := opts.GetAll()
		switch {
		case ao.GetStart() != nil:
		case ao.GetEnd() != nil:
			cursor = len(s.all)
		default:
			cursor = s.firstAtOrAfter(ao.GetPosition().GetCommitPosition() + 1) // subscriptions start after the given position
		}
	}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.subs, id)
		s.mu.Unlock()
	}()

	if err := srv.Send(&streams.ReadResp{Content: &streams.ReadResp_Confirmation{
		Confirmation: &streams.ReadResp_SubscriptionConfirmation{SubscriptionId: uuid.NewString()},
	}}); err != nil {
		return err
	}
	interval := checkpointInterval(opts.GetFilter())
	scanned, caughtUp := 0, false
	for {
		s.mu.Lock()
		events := src()
		if cursor > len(events) {
			cursor = len(events)
		}
		batch := events[cursor:]
		cursor = len(events)
		wake := s.appended
		bad, end := s.badCheckpoints && interval > 0, s.next // the end of the log this batch reaches
		s.mu.Unlock()

		for _, r := range batch {
			if match(r) {
				if err := srv.Send(eventResp(r, structured)); err != nil {
					return err
				}
				s.mu.Lock()
				s.eventsSent[name]++
				s.mu.Unlock()
			}
			scanned++
			if interval > 0 && scanned%interval == 0 {
				if err := srv.Send(&streams.ReadResp{Content: &streams.ReadResp_Checkpoint_{Checkpoint: &streams.ReadResp_Checkpoint{
					CommitPosition: r.position, PreparePosition: r.position,
				}}}); err != nil {
					return err
				}
			}
		}
		if bad {
			for _, p := range []uint64{math.MaxUint64, end} {
				if err := srv.Send(&streams.ReadResp{Content: &streams.ReadResp_Checkpoint_{Checkpoint: &streams.ReadResp_Checkpoint{
					CommitPosition: p, PreparePosition: p,
				}}}); err != nil {
					return err
				}
			}
		}
		if !caughtUp {
			caughtUp = true
			if err := srv.Send(&streams.ReadResp{Content: &streams.ReadResp_CaughtUp_{CaughtUp: &streams.ReadResp_CaughtUp{}}}); err != nil {
				return err
			}
		}
		select {
		case <-wake:
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), errDropped) {
				return status.Error(codes.Unavailable, errDropped.Error())
			}
			return status.FromContextError(ctx.Err()).Err()
		}
	}
}

// checkpointInterval is the number of scanned events between two checkpoints
// of a filtered subscription: the max search window times the multiplier. An
// unfiltered subscription gets none.
func checkpointInterval(f *streams.ReadReq_Options_FilterOptions) int {
	if f == nil {
		return 0
	}
	window := defaultSearchWindow
	if m := f.GetMax(); m > 0 {
		window = int(m)
	}
	return window * int(max(f.GetCheckpointIntervalMultiplier(), 1))
}

// filter selects the events a filtered read or subscription delivers.
type filter func(*record) bool

func newFilter(f *streams.ReadReq_Options_FilterOptions) (filter, error) {
	if f == nil {
		return func(*record) bool { return true }, nil
	}
	expr, field := f.GetStreamIdentifier(), func(r *record) string { return r.stream }
	if expr == nil {
		expr, field = f.GetEventType(), func(r *record) string { return r.metadata["type"] }
	}
	if expr == nil {
		return nil, status.Error(codes.InvalidArgument, "filter has no expression")
	}
	if expr.GetRegex() != "" {
		re, err := regexp.Compile(expr.GetRegex())
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "filter regex: %v", err)
		}
		return func(r *record) bool { return re.MatchString(field(r)) }, nil
	}
	prefixes := expr.GetPrefix()
	return func(r *record) bool {
		for _, p := range prefixes {
			if len(field(r)) >= len(p) && field(r)[:len(p)] == p {
				return true
			}
		}
		return false
	}, nil
}

func eventResp(r *record, structured bool) *streams.ReadResp {
	return &streams.ReadResp{Content: &streams.ReadResp_Event{Event: &streams.ReadResp_ReadEvent{
		Event: &streams.ReadResp_ReadEvent_RecordedEvent{
			Id:               toProtoUUID(r.id, structured),
			StreamIdentifier: &shared.StreamIdentifier{StreamName: []byte(r.stream)},
			StreamRevision:   r.revision,
			PreparePosition:  r.position,
			CommitPosition:   r.position,
			Metadata:         r.metadata,
			CustomMetadata:   r.custom,
			Data:             r.data,
		},
		Position: &streams.ReadResp_ReadEvent_CommitPosition{CommitPosition: r.position},
	}}}
}

func toProtoUUID(id uuid.UUID, structured bool) *shared.UUID {
	if !structured {
		return &shared.UUID{Value: &shared.UUID_String_{String_: id.String()}}
	}
	b := id[:]
	return &shared.UUID{Value: &shared.UUID_Structured_{Structured: &shared.UUID_Structured{
		MostSignificantBits:  int64(binary.BigEndian.Uint64(b[:8])),
		LeastSignificantBits: int64(binary.BigEndian.Uint64(b[8:])),
	}}}
}

func fromProtoUUID(id *shared.UUID) (uuid.UUID, error) {
	if s := id.GetStructured(); s != nil {
		var u uuid.UUID
		binary.BigEndian.PutUint64(u[:8], uint64(s.GetMostSignificantBits()))
		binary.BigEndian.PutUint64(u[8:], uint64(s.GetLeastSignificantBits()))
		return u, nil
	}
	if id.GetString_() == "" {
		return uuid.Nil, errors.New("missing")
	}
	return uuid.Parse(id.GetString_())
}
