package dagwire

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
)

// BlobReader streams the content of docs/contracts.md §8's `blob` agent: the concatenation of the raw
// 32-byte digests sha256("{seed}:{i}") for i = 0, 1, 2 ..., truncated to size bytes. It
// holds one digest at a time, so any size costs constant memory.
type BlobReader struct {
	seed      int64
	remaining int64
	index     int64
	block     [sha256.Size]byte
	offset    int // bytes of block already read; sha256.Size means "compute the next one"
	prefix    []byte
}

// NewBlobReader returns a reader of size bytes of blob content for seed.
func NewBlobReader(size, seed int64) *BlobReader {
	return &BlobReader{seed: seed, remaining: size, offset: sha256.Size}
}

// Read implements io.Reader.
func (r *BlobReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && r.remaining > 0 {
		if r.offset == sha256.Size {
			r.prefix = strconv.AppendInt(r.prefix[:0], r.seed, 10)
			r.prefix = append(r.prefix, ':')
			r.prefix = strconv.AppendInt(r.prefix, r.index, 10)
			r.block = sha256.Sum256(r.prefix)
			r.index++
			r.offset = 0
		}
		take := copy(p[n:], r.block[r.offset:])
		if int64(take) > r.remaining {
			take = int(r.remaining)
		}
		r.offset += take
		r.remaining -= int64(take)
		n += take
	}
	if n == 0 && r.remaining == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// BlobSHA256 is the lowercase hex sha256 of size bytes of blob content for seed.
func BlobSHA256(size, seed int64) (string, error) {
	if size < 0 {
		return "", fmt.Errorf("blob size %d is negative", size)
	}
	digest := sha256.New()
	if _, err := io.CopyBuffer(digest, NewBlobReader(size, seed), make([]byte, 64*1024)); err != nil {
		return "", err
	}
	return hex.EncodeToString(digest.Sum(nil)), nil
}
