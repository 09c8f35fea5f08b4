package dagwire

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
)

// Default addresses of the services (docs/contracts.md §1), used when no flag or variable names one.
const (
	DefaultOrchestratorAddr = "127.0.0.1:50051"
	DefaultDispatcherAddr   = "127.0.0.1:50052"
	DefaultStoreAddr        = "127.0.0.1:50053"
	// DefaultMaxMessageBytes is the send and receive limit of every channel and server.
	DefaultMaxMessageBytes = 16 * 1024 * 1024
	// TraceIDMetadataKey is the gRPC metadata key carrying a run's trace id.
	TraceIDMetadataKey = "x-dagwire-trace-id"
)

// Keepalive settings shared with the Python services: ping an idle connection every 30 s,
// drop it when a ping goes unanswered for 10 s, and accept peers' pings every 10 s.
var (
	clientKeepalive = keepalive.ClientParameters{
		Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true,
	}
	serverKeepalive = keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}
	// Python's gRPC core pings every 30 s; Go's default policy (one ping per 5 min) would
	// answer those pings with GOAWAY "too_many_pings" and drop the dispatcher's connection.
	serverPingPolicy = keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}
)

// Env returns the environment variable name, or def when it is unset or blank.
func Env(name, def string) string {
	if value := strings.TrimSpace(os.Getenv(name)); value != "" {
		return value
	}
	return def
}

// MaxMessageBytes reads DAGWIRE_MAX_MESSAGE_BYTES (default 16 MiB).
func MaxMessageBytes() (int, error) {
	raw := Env("DAGWIRE_MAX_MESSAGE_BYTES", "")
	if raw == "" {
		return DefaultMaxMessageBytes, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1024 {
		return 0, fmt.Errorf("DAGWIRE_MAX_MESSAGE_BYTES=%q: want a number of bytes, at least 1024", raw)
	}
	return n, nil
}

// CheckAddress says whether addr looks like host:port; its error names `what` (the flag or
// variable the address came from).
func CheckAddress(what, addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s=%q: want HOST:PORT, for example 127.0.0.1:50051", what, addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%s=%q: port %q is not a number from 0 to 65535", what, addr, port)
	}
	return nil
}

// CheckTarget says whether target is a gRPC target a dagwire client dials: host:port,
// dns:///name:port (every address of the name, balanced round-robin; a Kubernetes headless
// service) or ipv4:A:PORT,B:PORT (a fixed list of replicas). Its error names `what`.
// See docs/targets.md.
func CheckTarget(what, target string) error {
	switch {
	case strings.HasPrefix(target, "dns:"):
		rest := strings.TrimPrefix(target, "dns:")
		if strings.HasPrefix(rest, "//") {
			slash := strings.Index(rest[2:], "/")
			if slash < 0 {
				return fmt.Errorf("%s=%q: want dns:///NAME:PORT, for example dns:///dagwire-orchestrator.default.svc.cluster.local:50051", what, target)
			}
			rest = rest[2+slash+1:]
		}
		if err := CheckAddress(what, rest); err != nil {
			return fmt.Errorf("%s=%q: want dns:///NAME:PORT (the port is required), for example dns:///dagwire-orchestrator.default.svc.cluster.local:50051", what, target)
		}
		return nil
	case strings.HasPrefix(target, "ipv4:"):
		_, err := ipv4Addresses(target)
		if err != nil {
			return fmt.Errorf("%s=%q: %v", what, target, err)
		}
		return nil
	case strings.Contains(target, "://"):
		return fmt.Errorf("%s=%q: want HOST:PORT, dns:///NAME:PORT or ipv4:A:PORT,B:PORT", what, target)
	}
	if err := CheckAddress(what, target); err != nil {
		return fmt.Errorf("%s=%q: want HOST:PORT (for example 127.0.0.1:50051), dns:///NAME:PORT or ipv4:A:PORT,B:PORT", what, target)
	}
	return nil
}

func ipv4Addresses(target string) ([]resolver.Address, error) {
	var out []resolver.Address
	for _, item := range strings.Split(strings.TrimPrefix(target, "ipv4:"), ",") {
		item = strings.TrimSpace(item)
		host, port, err := net.SplitHostPort(item)
		ip := net.ParseIP(host)
		n, perr := strconv.Atoi(port)
		if err != nil || ip == nil || ip.To4() == nil || perr != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q is not an IPv4 address with a port, for example ipv4:10.0.0.5:50051,10.0.0.6:50051", item)
		}
		out = append(out, resolver.Address{Addr: item})
	}
	return out, nil
}

// serviceConfig balances calls round-robin over the target's addresses and retries, on
// UNAVAILABLE (a replica died), only the calls that are safe to repeat: reads, StartRun
// (idempotent by request_id), CancelRun, and adapter registration (docs/targets.md).
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [
      {"service": "dagwire.v1.OrchestratorService", "method": "StartRun"},
      {"service": "dagwire.v1.OrchestratorService", "method": "GetRun"},
      {"service": "dagwire.v1.OrchestratorService", "method": "ListRuns"},
      {"service": "dagwire.v1.OrchestratorService", "method": "WatchRun"},
      {"service": "dagwire.v1.OrchestratorService", "method": "CancelRun"},
      {"service": "dagwire.v1.ArtifactStoreService", "method": "GetArtifact"},
      {"service": "dagwire.v1.ArtifactStoreService", "method": "StatArtifact"},
      {"service": "dagwire.v1.ArtifactStoreService", "method": "ListArtifacts"},
      {"service": "dagwire.v1.DispatcherService", "method": "RegisterAdapter"},
      {"service": "dagwire.v1.DispatcherService", "method": "Heartbeat"},
      {"service": "dagwire.v1.DispatcherService", "method": "DeregisterAdapter"},
      {"service": "dagwire.v1.DispatcherService", "method": "ListAdapters"}
    ],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.1s",
      "maxBackoff": "0.5s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

var staticTargets atomic.Int64

// ClientConfig is how a process dials dagwire services: TLS and a bearer token, from the
// environment (docs/security.md), and the message limit.
type ClientConfig struct {
	TLS             TLS
	Token           string
	MaxMessageBytes int
}

// ClientConfigFromEnv reads the DAGWIRE_TLS_* settings and the token (TokenFromEnv with
// tokenFile, the --token-file flag of a CLI, or "") and checks every file they name now, so a
// bad one stops the process at start-up with an error naming the setting and the path.
func ClientConfigFromEnv(tokenFile string, maxMessageBytes int) (ClientConfig, error) {
	settings, err := TLSFromEnv()
	if err != nil {
		return ClientConfig{}, err
	}
	if settings.DialsTLS() {
		if _, err := settings.ClientCredentials(); err != nil {
			return ClientConfig{}, err
		}
	}
	token, err := TokenFromEnv(tokenFile)
	if err != nil {
		return ClientConfig{}, err
	}
	return ClientConfig{TLS: settings, Token: token, MaxMessageBytes: maxMessageBytes}, nil
}

// Dial opens a long-lived channel to a dagwire service at a target (CheckTarget), with the
// settings of the environment: see ClientConfig.Dial.
func Dial(target string, maxMessageBytes int) (*grpc.ClientConn, error) {
	config, err := ClientConfigFromEnv("", maxMessageBytes)
	if err != nil {
		return nil, err
	}
	return config.Dial(target)
}

// Dial opens a long-lived channel to a dagwire service at a target (CheckTarget), balanced
// round-robin over its addresses: plaintext, or TLS when the settings ask for it (the files
// are read now), sending the bearer token on every call when there is one (on a store call, the
// store grant of the call's context instead: WithStoreGrant). It connects
// lazily: an unreachable address shows up as codes.Unavailable on the first call.
func (c ClientConfig) Dial(target string) (*grpc.ClientConn, error) {
	maxMessageBytes := c.MaxMessageBytes
	if maxMessageBytes == 0 {
		maxMessageBytes = DefaultMaxMessageBytes
	}
	transport := insecure.NewCredentials()
	if c.TLS.DialsTLS() {
		var err error
		if transport, err = c.TLS.ClientCredentials(); err != nil {
			return nil, err
		}
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(transport),
		grpc.WithKeepaliveParams(clientKeepalive),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMessageBytes),
			grpc.MaxCallSendMsgSize(maxMessageBytes),
		),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithDisableServiceConfig(), // ours, not one published in DNS TXT records
	}
	// Always installed: with no token of its own, a process still sends the store grant of a
	// call's context (WithStoreGrant).
	opts = append(opts, grpc.WithPerRPCCredentials(bearer(c.Token)))
	overridden := c.TLS.DialsTLS() && c.TLS.ServerName != "" && namedTarget(target)
	if overridden {
		opts = append(opts, grpc.WithAuthority(c.TLS.ServerName))
	}
	dialTarget := "passthrough:///" + target
	switch {
	case strings.HasPrefix(target, "dns:"):
		dialTarget = target
	case strings.HasPrefix(target, "ipv4:"):
		// grpc-go has no ipv4: resolver: a manual one holds the fixed list
		addrs, err := ipv4Addresses(target)
		if err != nil {
			return nil, fmt.Errorf("cannot use target %q: %w", target, err)
		}
		if c.TLS.DialsTLS() && !overridden {
			for i := range addrs { // each replica's certificate is checked against its IP
				addrs[i].ServerName = hostOf(addrs[i].Addr)
			}
		}
		scheme := fmt.Sprintf("dagwire-ipv4-%d", staticTargets.Add(1))
		static := manual.NewBuilderWithScheme(scheme)
		static.InitialState(resolver.State{Addresses: addrs})
		opts = append(opts, grpc.WithResolvers(static))
		dialTarget = scheme + ":///replicas"
	}
	conn, err := grpc.NewClient(dialTarget, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot use address %q: %w", target, err)
	}
	return conn, nil
}

// ServerOptions are the options every dagwire server written in Go uses: message limits and
// keepalives compatible with the Python services (add grpc.Creds for TLS).
func ServerOptions(maxMessageBytes int) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMessageBytes),
		grpc.MaxSendMsgSize(maxMessageBytes),
		grpc.KeepaliveParams(serverKeepalive),
		grpc.KeepaliveEnforcementPolicy(serverPingPolicy),
	}
}
