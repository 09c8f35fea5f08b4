// Package adapter serves dagwire agents written in Go: a gRPC AgentAdapterService with
// health and reflection that registers with the dispatcher, heartbeats, fetches inputs held
// by reference from the store, and on SIGTERM/SIGINT deregisters and drains.
//
// A whole adapter:
//
//	func main() {
//		os.Exit(adapter.Main(adapter.Options{
//			Name: "go-shout",
//			Agents: map[string]adapter.Func{"shout": func(ctx context.Context, t *adapter.Task) ([]adapter.Output, error) {
//				text, err := t.Text(ctx)
//				if err != nil {
//					return nil, err
//				}
//				return []adapter.Output{adapter.TextOutput("out", strings.ToUpper(text))}, nil
//			}},
//		}))
//	}
package adapter

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	dagwirev1 "github.com/dagwire/dagwire/clients/go/gen/dagwire/v1"
)

// Func executes one attempt of one task. Returning an error fails the attempt: retried per
// the task's retry policy, unless the error is (or wraps) a NonRetryable one, or is a gRPC
// status error whose code says otherwise (INVALID_ARGUMENT, FAILED_PRECONDITION). The error
// text becomes the task's error, so make it say what went wrong.
//
// ctx carries the attempt's store grant (dagwire.WithStoreGrant): the store calls the agent
// makes itself with ctx, on a channel from dagwire.Dial, send the grant instead of the
// adapter's own token (docs/security.md, "Store grants").
type Func func(ctx context.Context, task *Task) ([]Output, error)

// nonRetryable marks an error that must not be retried; its text is the wrapped error's.
type nonRetryable struct{ err error }

func (e nonRetryable) Error() string { return e.err.Error() }
func (e nonRetryable) Unwrap() error { return e.err }

// NonRetryable marks err as final: the task fails at once (FAILED_PRECONDITION over gRPC)
// instead of being retried, for example for params the agent will never accept.
func NonRetryable(err error) error { return nonRetryable{err} }

// NonRetryablef is NonRetryable(fmt.Errorf(format, args...)).
func NonRetryablef(format string, args ...any) error {
	return nonRetryable{fmt.Errorf(format, args...)}
}

// IsNonRetryable says whether err is, or wraps, an error marked with NonRetryable.
func IsNonRetryable(err error) bool {
	var marked nonRetryable
	return errors.As(err, &marked)
}

// Task is one attempt of one task, as the adapter receives it.
type Task struct {
	// Agent is the agent key of the task.
	Agent string
	// ParamsJSON is the task's resolved params as JSON text ("null" when it has none).
	ParamsJSON string
	// Inputs are the outputs of the task's dependencies, in depends_on order.
	Inputs []Input
	// RunID, NodeID and Attempt (from 1) say which attempt this is.
	RunID   string
	NodeID  string
	Attempt int32
	// TraceID is the run's trace id (from the x-dagwire-trace-id metadata key).
	TraceID string
	// IdempotencyKey is run_id/node_id/attempt: the same for a re-sent call.
	IdempotencyKey string
}

// Params decodes ParamsJSON into v (for example a map or a struct); a decoding error is
// non-retryable (the same params would fail again).
func (t *Task) Params(v any) error {
	raw := t.ParamsJSON
	if strings.TrimSpace(raw) == "" {
		raw = "null"
	}
	if err := json.Unmarshal([]byte(raw), v); err != nil {
		return NonRetryablef("task %s: params do not fit agent %s: %v", t.NodeID, t.Agent, err)
	}
	return nil
}

// OpenInputs streams the inputs' contents joined in depends_on order, with no separator.
// Inputs held in the store are streamed from it, so memory stays flat whatever their size.
func (t *Task) OpenInputs(ctx context.Context) io.ReadCloser {
	return &joinedReader{ctx: ctx, inputs: t.Inputs}
}

// Text is the inputs joined, as UTF-8 text with invalid bytes replaced by U+FFFD.
func (t *Task) Text(ctx context.Context) (string, error) {
	reader := t.OpenInputs(ctx)
	defer reader.Close()
	raw, err := io.ReadAll(reader)
	if err != nil {
		return "", err
	}
	return strings.ToValidUTF8(string(raw), "\uFFFD"), nil
}

// Input is one input artifact: its metadata, and a way to read its content.
type Input struct {
	// Artifact is the input's metadata (name, media type, sha256, size ...).
	Artifact *dagwirev1.Artifact
	open     func(ctx context.Context) (io.ReadCloser, error)
}

// Open streams the input's content (inline, or from the store holding it).
func (in Input) Open(ctx context.Context) (io.ReadCloser, error) { return in.open(ctx) }

// InlineLimit is the largest output returned inline in the reply; a larger one is uploaded
// to the store (DAGWIRE_STORE_ADDR) with the attempt's grant and returned by reference.
const InlineLimit = 1 << 20

// Output is one output artifact: returned inline up to InlineLimit (1 MiB), uploaded to the
// store above it (up to the message limit, 16 MiB, in memory).
type Output struct {
	Name      string
	MediaType string
	Content   []byte
	Metadata  map[string]string
}

// TextOutput is an output holding UTF-8 text, media type text/plain.
func TextOutput(name, text string) Output {
	return Output{Name: name, MediaType: "text/plain", Content: []byte(text)}
}

// joinedReader reads the inputs one after the other, opening each only when reached.
type joinedReader struct {
	ctx     context.Context
	inputs  []Input
	current io.ReadCloser
}

func (r *joinedReader) Read(p []byte) (int, error) {
	for {
		if r.current == nil {
			if len(r.inputs) == 0 {
				return 0, io.EOF
			}
			next, err := r.inputs[0].Open(r.ctx)
			if err != nil {
				return 0, err
			}
			r.current, r.inputs = next, r.inputs[1:]
		}
		n, err := r.current.Read(p)
		if err == io.EOF {
			r.current.Close()
			r.current = nil
			if n > 0 {
				return n, nil
			}
			continue
		}
		return n, err
	}
}

func (r *joinedReader) Close() error {
	if r.current != nil {
		return r.current.Close()
	}
	return nil
}

func inlineInput(artifact *dagwirev1.Artifact) Input {
	return Input{Artifact: artifact, open: func(context.Context) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(artifact.GetContent())), nil
	}}
}
