package main

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestCountWords(t *testing.T) {
	cases := map[string]int64{
		"":                        0,
		"   ":                     0,
		"héllo polyglot wörld":    3,
		" a\tb\nc\u00a0d\u3000e ": 5,
		"bad \xff\xfe bytes":      3,
		"one":                     1,
	}
	for text, want := range cases {
		// One byte at a time, so multi-byte runes straddle every read boundary.
		got, err := countWords(iotest.OneByteReader(strings.NewReader(text)))
		if err != nil || got != want {
			t.Errorf("countWords(%q) = %d, %v; want %d", text, got, err, want)
		}
	}
}

func TestCountWordsReportsReadErrors(t *testing.T) {
	if _, err := countWords(iotest.ErrReader(io.ErrUnexpectedEOF)); err == nil {
		t.Fatal("a failing input must fail the count")
	}
}
