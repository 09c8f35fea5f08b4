// Package dagwire holds what every Go program talking to dagwire needs besides the generated
// stubs (package github.com/dagwire/dagwire/clients/go/gen/dagwire/v1): settings from the
// DAGWIRE_* environment, channels with the project's message limits and keepalives, artifact
// downloads that verify their sha256, the run summary in the CLI's JSON shape, and the
// blob content of docs/contracts.md §8.
package dagwire
