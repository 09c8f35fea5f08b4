package adapter

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/dagwire/dagwire/clients/go/dagwire"
)

// DefaultListenAddr is where an adapter listens unless told otherwise.
const DefaultListenAddr = "127.0.0.1:50060"

// Settings configure an adapter process; each comes from a flag whose default is the
// DAGWIRE_* variable named in its help.
type Settings struct {
	// ListenAddr is host:port to listen on; port 0 picks a free port.
	ListenAddr string
	// AdvertiseAddr is the address registered with the dispatcher (default: the bound
	// listen address; a wildcard host becomes this host's address).
	AdvertiseAddr string
	// DispatcherAddr is where the dispatcher is; empty disables registration.
	DispatcherAddr string
	// StoreAddr is the store that inputs held by reference come from, unless the reference
	// names another.
	StoreAddr string
	// Lease is the registration lease asked for when the dispatcher does not grant one.
	Lease time.Duration
	// Grace is how long in-flight calls get to finish after SIGTERM.
	Grace time.Duration
	// MaxMessageBytes is the gRPC send and receive limit per message.
	MaxMessageBytes int
	// LogLevel ("debug", "info", "warn", "error") and LogFormat ("json" or "text").
	LogLevel  string
	LogFormat string
}

// ParseSettings reads the settings from args (without the program name) over the DAGWIRE_*
// environment. A wrong value is an error naming its flag or variable.
func ParseSettings(prog string, args []string, stderr io.Writer) (Settings, error) {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(stderr)
	s := Settings{}
	fs.StringVar(&s.ListenAddr, "listen-addr", dagwire.Env("DAGWIRE_LISTEN_ADDR", DefaultListenAddr), "listen address, HOST:PORT (DAGWIRE_LISTEN_ADDR)")
	fs.StringVar(&s.AdvertiseAddr, "advertise-addr", dagwire.Env("DAGWIRE_ADVERTISE_ADDR", ""), "address registered with the dispatcher (DAGWIRE_ADVERTISE_ADDR; default: the bound listen address)")
	fs.StringVar(&s.DispatcherAddr, "dispatcher-addr", dagwire.Env("DAGWIRE_DISPATCHER_ADDR", dagwire.DefaultDispatcherAddr), "dispatcher address (DAGWIRE_DISPATCHER_ADDR)")
	fs.StringVar(&s.StoreAddr, "store-addr", dagwire.Env("DAGWIRE_STORE_ADDR", dagwire.DefaultStoreAddr), "store address for inputs held by reference (DAGWIRE_STORE_ADDR)")
	lease := fs.String("lease-seconds", dagwire.Env("DAGWIRE_LEASE_SECONDS", "10"), "registration lease in seconds (DAGWIRE_LEASE_SECONDS)")
	grace := fs.String("grace-seconds", "10", "seconds in-flight calls get to finish after SIGTERM")
	maxBytes := fs.String("max-message-bytes", dagwire.Env("DAGWIRE_MAX_MESSAGE_BYTES", strconv.Itoa(dagwire.DefaultMaxMessageBytes)), "gRPC message limit (DAGWIRE_MAX_MESSAGE_BYTES)")
	fs.StringVar(&s.LogLevel, "log-level", strings.ToLower(dagwire.Env("DAGWIRE_LOG_LEVEL", "info")), "debug, info, warn or error (DAGWIRE_LOG_LEVEL)")
	fs.StringVar(&s.LogFormat, "log-format", strings.ToLower(dagwire.Env("DAGWIRE_LOG_FORMAT", "")), "json or text (DAGWIRE_LOG_FORMAT; default: text on a terminal, else json)")
	if err := fs.Parse(args); err != nil {
		return s, err
	}
	if fs.NArg() > 0 {
		return s, fmt.Errorf("unexpected argument %q (settings are flags, see --help)", fs.Arg(0))
	}
	if err := dagwire.CheckAddress("--listen-addr/DAGWIRE_LISTEN_ADDR", s.ListenAddr); err != nil {
		return s, err
	}
	// peers may be replicated: any target (docs/targets.md); listen/advertise stay host:port
	for _, addr := range []struct{ what, value string }{
		{"--dispatcher-addr/DAGWIRE_DISPATCHER_ADDR", s.DispatcherAddr},
		{"--store-addr/DAGWIRE_STORE_ADDR", s.StoreAddr},
	} {
		if err := dagwire.CheckTarget(addr.what, addr.value); err != nil {
			return s, err
		}
	}
	if s.AdvertiseAddr != "" {
		if err := dagwire.CheckAddress("--advertise-addr/DAGWIRE_ADVERTISE_ADDR", s.AdvertiseAddr); err != nil {
			return s, err
		}
		if host := s.AdvertiseAddr[:strings.LastIndex(s.AdvertiseAddr, ":")]; isWildcard(host) {
			return s, fmt.Errorf("--advertise-addr/DAGWIRE_ADVERTISE_ADDR=%q: the dispatcher cannot dial a wildcard host; give this machine's address", s.AdvertiseAddr)
		}
	}
	seconds, err := strconv.ParseFloat(*lease, 64)
	if err != nil || seconds <= 0 {
		return s, fmt.Errorf("--lease-seconds/DAGWIRE_LEASE_SECONDS=%q: want a number of seconds above 0", *lease)
	}
	s.Lease = time.Duration(seconds * float64(time.Second))
	seconds, err = strconv.ParseFloat(*grace, 64)
	if err != nil || seconds < 0 {
		return s, fmt.Errorf("--grace-seconds=%q: want a number of seconds, 0 or more", *grace)
	}
	s.Grace = time.Duration(seconds * float64(time.Second))
	s.MaxMessageBytes, err = strconv.Atoi(*maxBytes)
	if err != nil || s.MaxMessageBytes < 1024 {
		return s, fmt.Errorf("--max-message-bytes/DAGWIRE_MAX_MESSAGE_BYTES=%q: want a number of bytes, at least 1024", *maxBytes)
	}
	if _, err := parseLevel(s.LogLevel); err != nil {
		return s, err
	}
	if s.LogFormat != "" && s.LogFormat != "json" && s.LogFormat != "text" {
		return s, fmt.Errorf("--log-format/DAGWIRE_LOG_FORMAT=%q: want json or text", s.LogFormat)
	}
	return s, nil
}

func isWildcard(host string) bool {
	return host == "" || host == "0.0.0.0" || host == "::" || host == "[::]"
}

func parseLevel(name string) (slog.Level, error) {
	switch name {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error", "critical":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("--log-level/DAGWIRE_LOG_LEVEL=%q: want debug, info, warn or error", name)
}

// newLogger logs to stderr, JSON lines unless text is asked for or stderr is a terminal.
func newLogger(s Settings, service string) *slog.Logger {
	level, _ := parseLevel(s.LogLevel)
	options := &slog.HandlerOptions{Level: level, ReplaceAttr: pythonKeys}
	format := s.LogFormat
	if format == "" {
		format = "json"
		if info, err := os.Stderr.Stat(); err == nil && info.Mode()&os.ModeCharDevice != 0 {
			format = "text"
		}
	}
	var handler slog.Handler = slog.NewJSONHandler(os.Stderr, options)
	if format == "text" {
		handler = slog.NewTextHandler(os.Stderr, options)
	}
	return slog.New(handler).With("service", service)
}

// pythonKeys names the standard fields as the Python services' JSON lines do ("message",
// lowercase "level"), so one log pipeline reads every dagwire process.
func pythonKeys(groups []string, attr slog.Attr) slog.Attr {
	if len(groups) > 0 {
		return attr
	}
	switch attr.Key {
	case slog.MessageKey:
		attr.Key = "message"
	case slog.LevelKey:
		attr.Value = slog.StringValue(strings.ToLower(attr.Value.String()))
	}
	return attr
}
