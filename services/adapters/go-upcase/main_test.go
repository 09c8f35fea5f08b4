package main

import "testing"

func TestUpperChangesOnlyASCIILetters(t *testing.T) {
	in := []byte("héllo, Wörld \xff\x00az{`@AZ")
	upper(in)
	if want := "HéLLO, WöRLD \xff\x00AZ{`@AZ"; string(in) != want {
		t.Fatalf("upper = %q, want %q", in, want)
	}
}
