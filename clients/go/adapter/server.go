package adapter

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/dagwire/dagwire/clients/go/dagwire"
	dagwirev1 "github.com/dagwire/dagwire/clients/go/gen/dagwire/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// DefaultCapacity is how many calls an adapter takes at once unless Options say otherwise.
const DefaultCapacity = 100

// Options describe an adapter.
type Options struct {
	// Name is the program and service name in logs and errors, for example "go-wordcount".
	Name string
	// Agents maps each agent key served to the function executing it; at least one.
	Agents map[string]Func
	// Capacity is how many Execute calls the adapter takes at once (default 100).
	Capacity int
	// Version is free-form, shown by Describe.
	Version string
}

// Main runs an adapter process with settings from os.Args and the environment until
// SIGTERM or SIGINT, and returns the exit status: 0 after a clean stop, 2 for bad settings
// or an address that cannot be bound.
func Main(opts Options) int {
	settings, err := ParseSettings(opts.Name, os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: error: %v\n", opts.Name, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := Serve(ctx, opts, settings); err != nil {
		fmt.Fprintf(os.Stderr, "%s: error: %v\n", opts.Name, err)
		return 2
	}
	return 0
}

// Serve serves the adapter until ctx ends, then deregisters, turns health NOT_SERVING and
// drains in-flight calls within settings.Grace. It returns an error only when the adapter
// cannot start (bad options, an address that cannot be bound).
func Serve(ctx context.Context, opts Options, settings Settings) error {
	if len(opts.Agents) == 0 {
		return errors.New("no agents to serve: Options.Agents is empty")
	}
	if opts.Capacity == 0 {
		opts.Capacity = DefaultCapacity
	}
	if opts.Capacity < 1 {
		return fmt.Errorf("capacity %d: want at least 1", opts.Capacity)
	}
	if opts.Name == "" {
		opts.Name = "adapter"
	}
	logger := newLogger(settings, opts.Name)
	// TLS and the token come from the environment, read and checked before anything serves
	// (docs/security.md): a bad file stops the adapter with one line naming it.
	security, err := dagwire.TLSFromEnv()
	if err != nil {
		return err
	}
	clients, err := dagwire.ClientConfigFromEnv("", settings.MaxMessageBytes)
	if err != nil {
		return err
	}
	serverOptions := dagwire.ServerOptions(settings.MaxMessageBytes)
	if security.ServesTLS() {
		creds, err := security.ServerCredentials(logger)
		if err != nil {
			return err
		}
		serverOptions = append(serverOptions, grpc.Creds(creds))
	}
	listener, err := net.Listen("tcp", settings.ListenAddr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s (--listen-addr/DAGWIRE_LISTEN_ADDR): %v", settings.ListenAddr, err)
	}
	bound := listener.Addr().(*net.TCPAddr)
	advertised := settings.AdvertiseAddr
	if advertised == "" {
		advertised = advertise(settings.ListenAddr, bound.Port, logger)
	}

	servicer := &servicer{opts: opts, settings: settings, clients: clients, log: logger, conns: map[string]*grpc.ClientConn{}}
	defer servicer.close()
	server := grpc.NewServer(serverOptions...)
	dagwirev1.RegisterAgentAdapterServiceServer(server, servicer)
	healthServer := health.NewServer()
	healthpb.RegisterHealthServer(server, healthServer)
	healthServer.SetServingStatus(dagwirev1.AgentAdapterService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	reflection.Register(server)

	// DAGWIRE_HEALTH_ADDR: the same health statuses in plaintext, and nothing else, for
	// probes that cannot speak TLS.
	var healthOnly *grpc.Server
	if security.HealthAddr != "" {
		healthListener, err := net.Listen("tcp", security.HealthAddr)
		if err != nil {
			listener.Close()
			return fmt.Errorf("cannot listen on %s (DAGWIRE_HEALTH_ADDR): %v", security.HealthAddr, err)
		}
		healthOnly = grpc.NewServer(dagwire.ServerOptions(settings.MaxMessageBytes)...)
		healthpb.RegisterHealthServer(healthOnly, healthServer)
		go func() { _ = healthOnly.Serve(healthListener) }()
		defer healthOnly.Stop()
		logger.Info(fmt.Sprintf("health alone, in plaintext, on %s", healthListener.Addr()))
	}

	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	keys := servicer.keys()
	mode := "plaintext"
	switch {
	case security.ClientCA != "":
		mode = "mTLS"
	case security.ServesTLS():
		mode = "TLS"
	}
	logger.Info(fmt.Sprintf("adapter serving %s on %s (advertised as %s, %s), capacity %d",
		strings.Join(keys, ", "), bound, advertised, mode, opts.Capacity),
		"dispatcher_addr", settings.DispatcherAddr, "store_addr", settings.StoreAddr,
		"lease_seconds", settings.Lease.Seconds(), "max_message_bytes", settings.MaxMessageBytes,
		"tls", mode != "plaintext", "dials_tls", clients.TLS.DialsTLS(), "token", clients.Token != "")

	var reg *registration
	regDone := make(chan struct{})
	regCtx, stopRegistering := context.WithCancel(context.Background())
	if settings.DispatcherAddr != "" {
		conn, err := clients.Dial(settings.DispatcherAddr)
		if err != nil {
			server.Stop()
			stopRegistering()
			return err
		}
		defer conn.Close()
		reg = &registration{
			client: dagwirev1.NewDispatcherServiceClient(conn), log: logger, addr: settings.DispatcherAddr,
			request: &dagwirev1.RegisterAdapterRequest{
				InstanceId: newInstanceID(), Address: advertised, Agents: keys, Capacity: int32(opts.Capacity),
			},
			lease: settings.Lease, dialsTLS: clients.TLS.DialsTLS(),
		}
		go func() { defer close(regDone); reg.run(regCtx) }()
	} else {
		close(regDone)
	}

	select {
	case <-ctx.Done():
	case err := <-served:
		stopRegistering()
		return fmt.Errorf("the gRPC server stopped: %v", err)
	}
	logger.Info(fmt.Sprintf("adapter stopping: deregistering, draining for up to %g s", settings.Grace.Seconds()))
	stopRegistering()
	<-regDone
	if reg != nil {
		reg.deregister()
	}
	healthServer.Shutdown()
	drained := make(chan struct{})
	go func() { server.GracefulStop(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(settings.Grace):
		logger.Warn("calls still in flight after the grace period: stopping them")
		server.Stop()
	}
	logger.Info("adapter stopped")
	return nil
}

// advertise picks the address to register: the listen host with the bound port; a wildcard
// host becomes this host's first non-loopback IPv4 address.
func advertise(listenAddr string, port int, logger *slog.Logger) string {
	host := listenAddr[:strings.LastIndex(listenAddr, ":")]
	if !isWildcard(host) {
		return net.JoinHostPort(strings.Trim(host, "[]"), fmt.Sprint(port))
	}
	host = "127.0.0.1"
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ip, ok := a.(*net.IPNet); ok && ip.IP.To4() != nil && !ip.IP.IsLoopback() {
				host = ip.IP.String()
				break
			}
		}
	}
	address := net.JoinHostPort(host, fmt.Sprint(port))
	logger.Warn(fmt.Sprintf("listening on %s: registering as %s (set DAGWIRE_ADVERTISE_ADDR to choose)", listenAddr, address))
	return address
}

// servicer implements AgentAdapterService over Options.Agents.
type servicer struct {
	dagwirev1.UnimplementedAgentAdapterServiceServer
	opts     Options
	settings Settings
	clients  dagwire.ClientConfig // how to dial the dispatcher and the stores
	log      *slog.Logger
	mu       sync.Mutex
	conns    map[string]*grpc.ClientConn // store address -> long-lived channel
}

func (s *servicer) keys() []string {
	keys := make([]string, 0, len(s.opts.Agents))
	for key := range s.opts.Agents {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}

func (s *servicer) Describe(context.Context, *dagwirev1.DescribeRequest) (*dagwirev1.DescribeResponse, error) {
	return &dagwirev1.DescribeResponse{
		Agents: s.keys(), Capacity: int32(s.opts.Capacity), Version: s.opts.Version, Language: "go",
	}, nil
}

func (s *servicer) Execute(ctx context.Context, req *dagwirev1.ExecuteRequest) (resp *dagwirev1.ExecuteResponse, err error) {
	started := time.Now()
	traceID := req.GetTraceId()
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if values := md.Get(dagwire.TraceIDMetadataKey); len(values) > 0 && values[0] != "" {
			traceID = values[0]
		}
	}
	log := s.log.With("trace_id", traceID, "run_id", req.GetRunId(), "node_id", req.GetNodeId(),
		"attempt", req.GetAttempt(), "agent", req.GetAgent())
	defer func() {
		if err != nil {
			log.Warn("execute failed", "code", status.Code(err).String(), "error", status.Convert(err).Message(),
				"duration_ms", time.Since(started).Milliseconds())
		} else {
			log.Info("execute succeeded", "outputs", len(resp.GetOutputArtifacts()),
				"duration_ms", time.Since(started).Milliseconds())
		}
	}()
	fn, ok := s.opts.Agents[req.GetAgent()]
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "agent %q is not served by %s (it serves: %s)",
			req.GetAgent(), s.opts.Name, strings.Join(s.keys(), ", "))
	}
	// The store calls of this attempt (its inputs, its outputs, the agent's own) send the
	// attempt's grant instead of the adapter's token (docs/security.md, "Store grants").
	ctx = dagwire.WithStoreGrant(ctx, req.GetStoreToken())
	task := &Task{
		Agent: req.GetAgent(), ParamsJSON: req.GetParamsJson(), RunID: req.GetRunId(), NodeID: req.GetNodeId(),
		Attempt: req.GetAttempt(), TraceID: traceID, IdempotencyKey: req.GetIdempotencyKey(),
	}
	for _, artifact := range req.GetInputArtifacts() {
		task.Inputs = append(task.Inputs, s.input(artifact))
	}
	outputs, err := s.call(ctx, fn, task)
	if err != nil {
		return nil, toStatus(ctx, err)
	}
	resp = &dagwirev1.ExecuteResponse{}
	for _, out := range outputs {
		mediaType := out.MediaType
		if mediaType == "" {
			mediaType = "application/octet-stream"
		}
		content := out.Content
		if content == nil {
			content = []byte{}
		}
		if len(content) > InlineLimit {
			artifact, err := s.upload(ctx, req, out, mediaType)
			if err != nil {
				return nil, toStatus(ctx, err)
			}
			resp.OutputArtifacts = append(resp.OutputArtifacts, artifact)
			continue
		}
		resp.OutputArtifacts = append(resp.OutputArtifacts, &dagwirev1.Artifact{
			Name: out.Name, MediaType: mediaType, Metadata: out.Metadata,
			Body: &dagwirev1.Artifact_Content{Content: content},
		})
	}
	return resp, nil
}

// call runs fn, turning a panic into a failed (retryable) attempt rather than a dead process.
func (s *servicer) call(ctx context.Context, fn Func, task *Task) (outputs []Output, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("agent panicked", "panic", fmt.Sprint(p), "trace_id", task.TraceID)
			err = fmt.Errorf("agent %s panicked: %v", task.Agent, p)
		}
	}()
	return fn(ctx, task)
}

// toStatus maps an agent's error to the status that decides retries (adapter_service.proto).
func toStatus(ctx context.Context, err error) error {
	if IsNonRetryable(err) {
		return status.Error(codes.FailedPrecondition, err.Error())
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() == context.DeadlineExceeded:
		return status.Error(codes.DeadlineExceeded, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	}
	// A store error while reading an input keeps its code (UNAVAILABLE, NOT_FOUND ...).
	var withStatus interface{ GRPCStatus() *status.Status }
	if errors.As(err, &withStatus) {
		return status.Error(withStatus.GRPCStatus().Code(), err.Error())
	}
	return status.Error(codes.Unknown, err.Error())
}

// input wraps an input artifact: inline content as is, a reference streamed from its store.
func (s *servicer) input(artifact *dagwirev1.Artifact) Input {
	if artifact.GetReference() == nil {
		return inlineInput(artifact)
	}
	return Input{Artifact: artifact, open: func(ctx context.Context) (io.ReadCloser, error) {
		addr := artifact.GetReference().GetStoreAddress()
		if addr == "" {
			addr = s.settings.StoreAddr
		}
		conn, err := s.store(addr)
		if err != nil {
			return nil, err
		}
		reader, err := dagwire.OpenArtifact(ctx, conn, artifact.GetArtifactId())
		if err != nil {
			return nil, fmt.Errorf("input %s (%s) from the store at %s: %w",
				artifact.GetName(), artifact.GetArtifactId(), addr, err)
		}
		return reader, nil
	}}
}

// upload stores an output too large to travel inline in the configured store, with the
// attempt's grant (in ctx), and returns a reference to it.
func (s *servicer) upload(ctx context.Context, req *dagwirev1.ExecuteRequest, out Output, mediaType string) (*dagwirev1.Artifact, error) {
	conn, err := s.store(s.settings.StoreAddr)
	if err != nil {
		return nil, err
	}
	header := &dagwirev1.ArtifactHeader{
		Name: out.Name, MediaType: mediaType, Metadata: out.Metadata,
		RunId: req.GetRunId(), NodeId: req.GetNodeId(),
	}
	size := int64(len(out.Content))
	header.Size = &size
	artifact, err := dagwire.UploadArtifact(ctx, conn, header, bytes.NewReader(out.Content))
	if err != nil {
		return nil, fmt.Errorf("uploading output %s (%d bytes) to the store at %s: %w", out.Name, len(out.Content), s.settings.StoreAddr, err)
	}
	artifact.Body = &dagwirev1.Artifact_Reference{Reference: &dagwirev1.ArtifactReference{StoreAddress: s.settings.StoreAddr}}
	return artifact, nil
}

func (s *servicer) store(addr string) (*grpc.ClientConn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if conn, ok := s.conns[addr]; ok {
		return conn, nil
	}
	conn, err := s.clients.Dial(addr)
	if err != nil {
		return nil, err
	}
	s.conns[addr] = conn
	return conn, nil
}

func (s *servicer) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, conn := range s.conns {
		conn.Close()
	}
}

// registration keeps the instance registered: register (retrying while the dispatcher is
// down), heartbeat at a third of the lease, register again when the dispatcher forgot it.
type registration struct {
	client  dagwirev1.DispatcherServiceClient
	log     *slog.Logger
	addr    string
	request *dagwirev1.RegisterAdapterRequest
	lease   time.Duration
	// dialsTLS: the channel uses TLS (for the hint in a failure's log line)
	dialsTLS bool
}

const (
	minBackoff  = 200 * time.Millisecond
	maxBackoff  = 5 * time.Second
	callTimeout = 5 * time.Second
)

func (r *registration) run(ctx context.Context) {
	registered, failing := false, false
	backoff := minBackoff
	for {
		var delay time.Duration
		callCtx, cancel := context.WithTimeout(ctx, callTimeout)
		var lease time.Duration
		var err error
		if registered {
			var reply *dagwirev1.HeartbeatResponse
			reply, err = r.client.Heartbeat(callCtx, &dagwirev1.HeartbeatRequest{InstanceId: r.request.GetInstanceId()})
			lease = reply.GetLeaseDuration().AsDuration()
		} else {
			var reply *dagwirev1.RegisterAdapterResponse
			reply, err = r.client.RegisterAdapter(callCtx, r.request)
			lease = reply.GetLeaseDuration().AsDuration()
		}
		cancel()
		if lease <= 0 {
			lease = r.lease
		}
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			if !registered {
				r.log.Info(fmt.Sprintf("registered with the dispatcher at %s as %s (%s), lease %g s",
					r.addr, r.request.GetAddress(), strings.Join(r.request.GetAgents(), ", "), lease.Seconds()),
					"instance_id", r.request.GetInstanceId())
			}
			registered, failing, backoff = true, false, minBackoff
			delay = max(lease/3, 50*time.Millisecond)
		case registered && status.Code(err) == codes.NotFound:
			r.log.Warn("the dispatcher dropped this instance (lease expired): registering")
			registered = false
		default:
			if !failing {
				message := status.Convert(err).Message()
				if hint := dagwire.ExplainConnectFailure(message, r.dialsTLS); hint != "" {
					message = hint + " (" + message + ")"
				}
				r.log.Warn(fmt.Sprintf("cannot reach the dispatcher at %s: %s (retrying)", r.addr, message))
			}
			registered, failing = false, true
			delay = jitter(backoff)
			backoff = min(backoff*2, maxBackoff)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

func (r *registration) deregister() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := r.client.DeregisterAdapter(ctx, &dagwirev1.DeregisterAdapterRequest{InstanceId: r.request.GetInstanceId()}); err != nil {
		r.log.Warn("could not deregister from the dispatcher: " + status.Convert(err).Message())
		return
	}
	r.log.Info("deregistered from the dispatcher")
}

// jitter draws a delay from [d/2, d].
func jitter(d time.Duration) time.Duration {
	n, err := rand.Int(rand.Reader, big.NewInt(int64(d/2)+1))
	if err != nil {
		return d
	}
	return d/2 + time.Duration(n.Int64())
}

func newInstanceID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
