// Command dagwire-go is dagwire's client in Go: it starts a workflow run and follows it, fetches
// artifacts, and recomputes the digest of the toolbox's blob content.
//
//	dagwire-go run FILE [--var KEY=VALUE]... [--server HOST:PORT] [--token-file PATH]
//	dagwire-go get ARTIFACT_ID [-o FILE] [--store HOST:PORT] [--token-file PATH]
//	dagwire-go blob-sha256 --size N [--seed S]
//
// TLS and the bearer token come from the DAGWIRE_TLS_* and DAGWIRE_TOKEN(_FILE) variables
// (docs/security.md). Results go to stdout, progress and errors to stderr. Exit status: 0
// success, 1 the run failed or was cancelled, 2 bad input (a TLS or token file included) or
// an unknown id, 3 a server unreachable (or refusing the TLS connection), 4 the server
// refused the call's credentials (UNAUTHENTICATED or PERMISSION_DENIED).
package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/dagwire/dagwire/clients/go/dagwire"
	dagwirev1 "github.com/dagwire/dagwire/clients/go/gen/dagwire/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

const (
	exitOK          = 0
	exitRunFailed   = 1
	exitBadInput    = 2
	exitUnreachable = 3
	exitNotAllowed  = 4
	prog            = "dagwire-go"
	// How long a dropped WatchRun stream is re-attached before giving up.
	reattachFor = 30 * time.Second
)

const usage = `usage:
  dagwire-go run FILE [--var KEY=VALUE]... [--server HOST:PORT] [--token-file PATH]
      start the workflow in FILE (YAML or JSON), follow it (one line per event on stderr)
      and print its summary as JSON on stdout; exit 0 if it succeeded, 1 if not
  dagwire-go get ARTIFACT_ID [-o FILE] [--store HOST:PORT] [--token-file PATH]
      download an artifact (to stdout, or FILE) and verify its sha256
  dagwire-go blob-sha256 --size N [--seed S]
      print the sha256 of the toolbox blob agent's content for that size and seed

addresses default to DAGWIRE_ORCHESTRATOR_ADDR / DAGWIRE_STORE_ADDR, then 127.0.0.1:50051 / :50053;
TLS: DAGWIRE_TLS_CA, DAGWIRE_TLS_CLIENT_CERT/_KEY, DAGWIRE_TLS_SERVER_NAME; the bearer token:
--token-file, else DAGWIRE_TOKEN, else DAGWIRE_TOKEN_FILE (docs/security.md)
exit status: 0 ok, 1 the run failed, 2 bad input, 3 unreachable, 4 not authenticated or not allowed
`

// exitError is an error with the exit status it means.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func fail(code int, format string, args ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, args...)}
}

func main() {
	err := run(os.Args[1:])
	if err == nil {
		return
	}
	var exit *exitError
	if errors.As(err, &exit) {
		if exit.msg != "" {
			fmt.Fprintf(os.Stderr, "%s: error: %s\n", prog, exit.msg)
		}
		os.Exit(exit.code)
	}
	fmt.Fprintf(os.Stderr, "%s: error: %v\n", prog, err)
	os.Exit(exitBadInput)
}

func run(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, usage)
		if len(args) == 0 {
			return &exitError{code: exitBadInput}
		}
		return nil
	}
	maxBytes, err := dagwire.MaxMessageBytes()
	if err != nil {
		return fail(exitBadInput, "%v", err)
	}
	switch args[0] {
	case "run":
		return runCommand(args[1:], maxBytes)
	case "get":
		return getCommand(args[1:], maxBytes)
	case "blob-sha256":
		return blobCommand(args[1:])
	default:
		return fail(exitBadInput, "unknown command %q (commands: run, get, blob-sha256; see --help)", args[0])
	}
}

// parse parses flags and positional arguments in any order ("run FILE --var a=b" works).
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(os.Stderr, usage)
				return nil, &exitError{code: exitOK}
			}
			return nil, fail(exitBadInput, "%s: %v (see --help)", fs.Name(), err)
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

// varsFlag collects repeated --var KEY=VALUE flags.
type varsFlag map[string]string

func (v varsFlag) String() string { return "" }

func (v varsFlag) Set(raw string) error {
	key, value, ok := strings.Cut(raw, "=")
	if !ok || key == "" {
		return fmt.Errorf("--var %q: want KEY=VALUE", raw)
	}
	v[key] = value
	return nil
}

func runCommand(args []string, maxBytes int) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	vars := varsFlag{}
	fs.Var(vars, "var", "KEY=VALUE for ${user.KEY}; repeatable")
	server := fs.String("server", dagwire.Env("DAGWIRE_ORCHESTRATOR_ADDR", dagwire.DefaultOrchestratorAddr), "orchestrator address")
	tokenFile := fs.String("token-file", "", "file holding the bearer token (default: DAGWIRE_TOKEN, else DAGWIRE_TOKEN_FILE)")
	positional, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(positional) != 1 {
		return fail(exitBadInput, "run: want exactly one workflow FILE, got %d arguments (see --help)", len(positional))
	}
	if err := dagwire.CheckTarget("--server", *server); err != nil {
		return fail(exitBadInput, "%v", err)
	}
	spec, err := os.ReadFile(positional[0])
	if err != nil {
		return fail(exitBadInput, "cannot read the workflow file: %v", err)
	}
	conn, dialsTLS, err := dial(*server, *tokenFile, maxBytes)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := dagwirev1.NewOrchestratorServiceClient(conn)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	started, err := client.StartRun(ctx, &dagwirev1.StartRunRequest{
		Spec: string(spec), UserVars: vars, RequestId: newUUID(),
	})
	if err != nil {
		return rpcFailure(err, fmt.Sprintf("starting %s", filepath.Base(positional[0])), *server, dialsTLS)
	}
	runID := started.GetRunId()
	fmt.Fprintf(os.Stderr, "run %s started (trace %s)\n", runID, started.GetTraceId())
	if err := follow(ctx, client, runID); err != nil {
		if ctx.Err() != nil {
			return fail(exitRunFailed, "stopped following run %s; it goes on (re-attach with `dagwire watch %s`, cancel with `dagwire cancel %s`)", runID, runID, runID)
		}
		return rpcFailure(err, "following run "+runID, *server, dialsTLS)
	}
	reply, err := client.GetRun(ctx, &dagwirev1.GetRunRequest{RunId: runID})
	if err != nil {
		return rpcFailure(err, "reading run "+runID, *server, dialsTLS)
	}
	out := json.NewEncoder(os.Stdout)
	out.SetEscapeHTML(false)
	if err := out.Encode(dagwire.SummaryOf(reply.GetRun())); err != nil {
		return err
	}
	if reply.GetRun().GetStatus() != dagwirev1.RunStatus_RUN_STATUS_SUCCEEDED {
		return &exitError{code: exitRunFailed}
	}
	return nil
}

// follow prints the run's events to stderr until run_finished, re-attaching after the last
// sequence seen when the stream drops (for up to reattachFor).
func follow(ctx context.Context, client dagwirev1.OrchestratorServiceClient, runID string) error {
	var last int64
	var brokenSince time.Time
	for {
		stream, err := client.WatchRun(ctx, &dagwirev1.WatchRunRequest{RunId: runID, AfterSequence: last})
		for err == nil {
			var msg *dagwirev1.WatchRunResponse
			msg, err = stream.Recv()
			if err != nil {
				break
			}
			brokenSince = time.Time{}
			event := msg.GetEvent()
			last = event.GetSequence()
			fmt.Fprintln(os.Stderr, describe(event))
			if event.GetRunFinished() != nil {
				return nil
			}
		}
		if err == io.EOF {
			err = status.Error(codes.Unavailable, "the event stream ended before the run finished")
		}
		if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			return err
		}
		if brokenSince.IsZero() {
			brokenSince = time.Now()
			fmt.Fprintf(os.Stderr, "event stream lost (%v); re-attaching after event %d\n", status.Convert(err).Message(), last)
		} else if time.Since(brokenSince) > reattachFor {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// describe renders one run event as a progress line.
func describe(event *dagwirev1.RunEvent) string {
	prefix := fmt.Sprintf("[%d]", event.GetSequence())
	switch e := event.GetEvent().(type) {
	case *dagwirev1.RunEvent_TaskStarted_:
		t := e.TaskStarted
		return fmt.Sprintf("%s %s started (agent %s, attempt %d)", prefix, t.GetNodeId(), t.GetAgent(), t.GetAttempt())
	case *dagwirev1.RunEvent_AttemptFailed_:
		t := e.AttemptFailed
		retry := "no retry"
		if t.GetWillRetry() {
			retry = fmt.Sprintf("retrying in %.2fs", t.GetRetryDelay().AsDuration().Seconds())
		}
		return fmt.Sprintf("%s %s attempt %d failed: %s (%s)", prefix, t.GetNodeId(), t.GetAttempt(), t.GetError(), retry)
	case *dagwirev1.RunEvent_TaskFinished_:
		t := e.TaskFinished
		line := fmt.Sprintf("%s %s %s (attempts %d)", prefix, t.GetNodeId(), dagwire.TaskStatusWord(t.GetStatus()), t.GetAttempts())
		if t.GetError() != "" {
			line += ": " + t.GetError()
		}
		return line
	case *dagwirev1.RunEvent_RunFinished_:
		t := e.RunFinished
		line := fmt.Sprintf("%s run %s %s", prefix, event.GetRunId(), dagwire.RunStatusWord(t.GetStatus()))
		if t.GetError() != "" {
			line += ": " + t.GetError()
		}
		return line
	default:
		return prefix + " (an event this client does not know)"
	}
}

func getCommand(args []string, maxBytes int) error {
	fs := flag.NewFlagSet("get", flag.ContinueOnError)
	output := fs.String("o", "", "write the content to FILE instead of stdout")
	store := fs.String("store", dagwire.Env("DAGWIRE_STORE_ADDR", dagwire.DefaultStoreAddr), "store address")
	tokenFile := fs.String("token-file", "", "file holding the bearer token (default: DAGWIRE_TOKEN, else DAGWIRE_TOKEN_FILE)")
	positional, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(positional) != 1 {
		return fail(exitBadInput, "get: want exactly one ARTIFACT_ID, got %d arguments (see --help)", len(positional))
	}
	if err := dagwire.CheckTarget("--store", *store); err != nil {
		return fail(exitBadInput, "%v", err)
	}
	conn, dialsTLS, err := dial(*store, *tokenFile, maxBytes)
	if err != nil {
		return err
	}
	defer conn.Close()

	var sink io.Writer = os.Stdout
	var file *os.File
	if *output != "" {
		// Write next to the target and rename at the end: a failed download leaves no file.
		file, err = os.CreateTemp(filepath.Dir(*output), "."+filepath.Base(*output)+".part-*")
		if err != nil {
			return fail(exitBadInput, "cannot write %s: %v", *output, err)
		}
		defer os.Remove(file.Name())
		defer file.Close()
		sink = file
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	meta, err := dagwire.DownloadArtifact(ctx, conn, positional[0], sink)
	if err != nil {
		return rpcFailure(err, "downloading artifact "+positional[0], *store, dialsTLS)
	}
	if file != nil {
		if err := file.Close(); err != nil {
			return fail(exitBadInput, "cannot write %s: %v", *output, err)
		}
		if err := os.Rename(file.Name(), *output); err != nil {
			return fail(exitBadInput, "cannot write %s: %v", *output, err)
		}
		fmt.Fprintf(os.Stderr, "%s: %d bytes, sha256 %s verified\n", *output, meta.GetSize(), meta.GetSha256())
	}
	return nil
}

func blobCommand(args []string) error {
	fs := flag.NewFlagSet("blob-sha256", flag.ContinueOnError)
	size := fs.Int64("size", -1, "content size in bytes")
	seed := fs.Int64("seed", 0, "the blob agent's seed")
	positional, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(positional) != 0 {
		return fail(exitBadInput, "blob-sha256: unexpected argument %q (see --help)", positional[0])
	}
	if *size < 0 {
		return fail(exitBadInput, "blob-sha256: --size N is required (a number of bytes, 0 or more)")
	}
	digest, err := dagwire.BlobSHA256(*size, *seed)
	if err != nil {
		return fail(exitBadInput, "blob-sha256: %v", err)
	}
	fmt.Println(digest)
	return nil
}

// dial opens the channel to target with the environment's TLS settings and token (or the
// --token-file given); a bad TLS or token file is bad input (exit 2). It also says whether
// the channel uses TLS, for the hints of rpcFailure.
func dial(target, tokenFile string, maxBytes int) (*grpc.ClientConn, bool, error) {
	config, err := dagwire.ClientConfigFromEnv(tokenFile, maxBytes)
	if err != nil {
		return nil, false, fail(exitBadInput, "%v", err)
	}
	conn, err := config.Dial(target)
	if err != nil {
		return nil, false, fail(exitBadInput, "%v", err)
	}
	return conn, config.TLS.DialsTLS(), nil
}

// rpcFailure maps a failed call to the CLI's exit status, with a one-line message.
func rpcFailure(err error, doing, addr string, dialsTLS bool) error {
	st, ok := status.FromError(err)
	if !ok {
		return fail(exitBadInput, "%s: %v", doing, err)
	}
	switch st.Code() {
	case codes.Unauthenticated:
		return fail(exitNotAllowed, "not authenticated: %s", st.Message())
	case codes.PermissionDenied:
		return fail(exitNotAllowed, "not allowed: %s", st.Message())
	case codes.Unavailable:
		if hint := dagwire.ExplainConnectFailure(st.Message(), dialsTLS); hint != "" {
			return fail(exitUnreachable, "%s: cannot reach %s: %s (%s)", doing, addr, hint, innermost(st.Message()))
		}
		return fail(exitUnreachable, "%s: cannot reach %s (%s); is the service running?", doing, addr, innermost(st.Message()))
	case codes.InvalidArgument, codes.NotFound, codes.FailedPrecondition, codes.AlreadyExists, codes.OutOfRange:
		return fail(exitBadInput, "%s: %s", doing, st.Message())
	case codes.Canceled:
		return fail(exitRunFailed, "%s: cancelled", doing)
	default:
		return fail(exitRunFailed, "%s: %s: %s", doing, st.Code(), st.Message())
	}
}

// innermost is the last "desc = ..." of a grpc-go message that nests retries and transport
// errors ("max retries exhausted: ... desc = connection error: desc = \"transport: ...\"").
func innermost(message string) string {
	if i := strings.LastIndex(message, "desc = "); i >= 0 {
		message = message[i+len("desc = "):]
	}
	return strings.Trim(message, "\" ")
}

// newUUID is a random (version 4) UUID, the StartRun request_id.
func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
