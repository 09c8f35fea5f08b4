//go:build tools

// Package devservers pins the development servers that dagwire's
// integration tests run. This file is never built; its blank import keeps
// MinIO's main package in go.mod/go.sum so that
// `go build github.com/minio/minio` builds the pinned version.
package devservers

import (
	_ "github.com/minio/minio"
)
