// Command go-wordcount is a dagwire adapter written in Go serving the agent `wordcount`: its
// output `out` (text/plain) is the decimal count of whitespace-separated words (as Python's
// str.split() sees them) in params.text if given, else in the task's inputs joined (read as
// UTF-8, invalid bytes replaced). Inputs are streamed, so any size counts in constant memory.
//
// Settings: flags over DAGWIRE_LISTEN_ADDR, DAGWIRE_ADVERTISE_ADDR, DAGWIRE_DISPATCHER_ADDR,
// DAGWIRE_STORE_ADDR, DAGWIRE_LEASE_SECONDS ... (see --help).
package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode"

	"github.com/dagwire/dagwire/clients/go/adapter"
)

func main() {
	os.Exit(adapter.Main(adapter.Options{
		Name:     "go-wordcount",
		Agents:   map[string]adapter.Func{"wordcount": wordcount},
		Capacity: 200,
		Version:  "1",
	}))
}

// params are the agent's params; Text is nil when not given.
type params struct {
	Text *string `json:"text"`
}

func wordcount(ctx context.Context, task *adapter.Task) ([]adapter.Output, error) {
	var p params
	if err := task.Params(&p); err != nil {
		return nil, fmt.Errorf("%w (wordcount takes {\"text\": \"...\"} or no params)", err)
	}
	var source io.Reader
	if p.Text != nil {
		source = strings.NewReader(*p.Text)
	} else {
		inputs := task.OpenInputs(ctx)
		defer inputs.Close()
		source = inputs
	}
	n, err := countWords(source)
	if err != nil {
		return nil, fmt.Errorf("wordcount: reading the inputs of task %s: %w", task.NodeID, err)
	}
	return []adapter.Output{adapter.TextOutput("out", strconv.FormatInt(n, 10))}, nil
}

// countWords counts maximal runs of non-space runes, splitting where Python's str.split()
// does (Unicode White_Space plus the separators U+001C..U+001F), so this agent and a Python
// one agree on any text; an invalid UTF-8 byte is a non-space rune, as U+FFFD would be.
func countWords(r io.Reader) (int64, error) {
	reader := bufio.NewReaderSize(r, 64*1024)
	var words int64
	inWord := false
	for {
		ch, _, err := reader.ReadRune()
		if err == io.EOF {
			return words, nil
		}
		if err != nil {
			return words, err
		}
		if unicode.IsSpace(ch) || (ch >= 0x1c && ch <= 0x1f) {
			inWord = false
		} else if !inWord {
			inWord = true
			words++
		}
	}
}
