// Command go-upcase is a dagwire adapter written in Go serving the agent `upcase`: its output
// `out` (application/octet-stream) is params.text if given, else the task's inputs joined,
// with the ASCII letters a-z made upper case and every other byte unchanged (as Python's
// bytes.upper()), so the output of any input, binary too, is checkable byte for byte.
//
// An output over 1 MiB is uploaded to the store by the toolkit, with the attempt's store
// grant under auth (docs/security.md, "Store grants").
//
// Settings: flags over DAGWIRE_LISTEN_ADDR, DAGWIRE_ADVERTISE_ADDR, DAGWIRE_DISPATCHER_ADDR,
// DAGWIRE_STORE_ADDR, DAGWIRE_LEASE_SECONDS ... (see --help).
package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/dagwire/dagwire/clients/go/adapter"
)

func main() {
	os.Exit(adapter.Main(adapter.Options{
		Name:     "go-upcase",
		Agents:   map[string]adapter.Func{"upcase": upcase},
		Capacity: 50,
		Version:  "1",
	}))
}

// params are the agent's params; Text is nil when not given.
type params struct {
	Text *string `json:"text"`
}

func upcase(ctx context.Context, task *adapter.Task) ([]adapter.Output, error) {
	var p params
	if err := task.Params(&p); err != nil {
		return nil, fmt.Errorf("%w (upcase takes {\"text\": \"...\"} or no params)", err)
	}
	var content []byte
	if p.Text != nil {
		content = []byte(*p.Text)
	} else {
		inputs := task.OpenInputs(ctx)
		defer inputs.Close()
		var err error
		if content, err = io.ReadAll(inputs); err != nil {
			return nil, fmt.Errorf("upcase: reading the inputs of task %s: %w", task.NodeID, err)
		}
	}
	upper(content)
	return []adapter.Output{{Name: "out", MediaType: "application/octet-stream", Content: content}}, nil
}

// upper makes the ASCII letters of b upper case, in place.
func upper(b []byte) {
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			b[i] = c - ('a' - 'A')
		}
	}
}
