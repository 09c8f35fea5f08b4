package dagwire

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Default addresses of the services (DESIGN §1), used when no flag or variable names one.
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

// Dial opens a long-lived plaintext channel to a dagwire service. It connects lazily: an
// unreachable address shows up as codes.Unavailable on the first call.
func Dial(addr string, maxMessageBytes int) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(
		"passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithKeepaliveParams(clientKeepalive),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMessageBytes),
			grpc.MaxCallSendMsgSize(maxMessageBytes),
		),
	)
	if err != nil {
		return nil, fmt.Errorf("cannot use address %q: %w", addr, err)
	}
	return conn, nil
}

// ServerOptions are the options every dagwire server written in Go uses: message limits and
// keepalives compatible with the Python services.
func ServerOptions(maxMessageBytes int) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(maxMessageBytes),
		grpc.MaxSendMsgSize(maxMessageBytes),
		grpc.KeepaliveParams(serverKeepalive),
		grpc.KeepaliveEnforcementPolicy(serverPingPolicy),
	}
}
