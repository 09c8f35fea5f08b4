package dagwire

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"

	dagwirev1 "github.com/dagwire/dagwire/clients/go/gen/dagwire/v1"
	"google.golang.org/grpc"
)

// ArtifactReader streams one artifact's content from the store's GetArtifact and checks, at
// the end, that the bytes match the sha256 and size the store reported.
type ArtifactReader struct {
	// Artifact is the metadata the store sent first (no content).
	Artifact *dagwirev1.Artifact
	stream   grpc.ServerStreamingClient[dagwirev1.GetArtifactResponse]
	cancel   context.CancelFunc
	pending  []byte
	digest   hash.Hash
	size     int64
	done     bool
}

// OpenArtifact starts streaming artifact id from the store behind conn. Errors are the
// store's gRPC status (NOT_FOUND for an unknown id, UNAVAILABLE when it is unreachable).
// Close the reader when done.
func OpenArtifact(ctx context.Context, conn grpc.ClientConnInterface, id string) (*ArtifactReader, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := dagwirev1.NewArtifactStoreServiceClient(conn).GetArtifact(
		ctx, &dagwirev1.GetArtifactRequest{ArtifactId: id})
	if err != nil {
		cancel()
		return nil, err
	}
	first, err := stream.Recv()
	if err != nil {
		cancel()
		return nil, err
	}
	meta := first.GetArtifact()
	if meta == nil {
		cancel()
		return nil, fmt.Errorf("artifact %s: the store's stream did not start with the metadata", id)
	}
	return &ArtifactReader{Artifact: meta, stream: stream, cancel: cancel, digest: sha256.New()}, nil
}

// Read implements io.Reader; at the end of the stream it returns an error instead of io.EOF
// when the content does not match the store's sha256 or size.
func (r *ArtifactReader) Read(p []byte) (int, error) {
	for len(r.pending) == 0 {
		if r.done {
			return 0, io.EOF
		}
		msg, err := r.stream.Recv()
		if err == io.EOF {
			r.done = true
			return 0, r.verify()
		}
		if err != nil {
			return 0, fmt.Errorf("artifact %s: download interrupted: %w", r.Artifact.GetArtifactId(), err)
		}
		r.pending = msg.GetChunk()
		r.digest.Write(r.pending)
		r.size += int64(len(r.pending))
	}
	n := copy(p, r.pending)
	r.pending = r.pending[n:]
	return n, nil
}

func (r *ArtifactReader) verify() error {
	got := hex.EncodeToString(r.digest.Sum(nil))
	if want := r.Artifact.GetSha256(); want != "" && got != want {
		return fmt.Errorf("artifact %s: content sha256 %s does not match the store's %s",
			r.Artifact.GetArtifactId(), got, want)
	}
	if want := r.Artifact.GetSize(); r.size != want {
		return fmt.Errorf("artifact %s: got %d bytes, the store says %d",
			r.Artifact.GetArtifactId(), r.size, want)
	}
	return io.EOF
}

// SHA256 is the hex sha256 of the bytes read so far (all of them once Read returned io.EOF).
func (r *ArtifactReader) SHA256() string { return hex.EncodeToString(r.digest.Sum(nil)) }

// Close ends the stream.
func (r *ArtifactReader) Close() error {
	r.cancel()
	return nil
}

// DownloadArtifact copies artifact id from the store behind conn into w, verifying its sha256
// and size, and returns its metadata.
func DownloadArtifact(ctx context.Context, conn grpc.ClientConnInterface, id string, w io.Writer) (*dagwirev1.Artifact, error) {
	reader, err := OpenArtifact(ctx, conn, id)
	if err != nil {
		return nil, err
	}
	defer reader.Close()
	if _, err := io.CopyBuffer(w, reader, make([]byte, 256*1024)); err != nil {
		return nil, err
	}
	return reader.Artifact, nil
}

// uploadChunkBytes is the size of the chunks UploadArtifact sends: well under any message limit.
const uploadChunkBytes = 1 << 20

// UploadArtifact stores the content read from r in the store behind conn with PutArtifact,
// under header (name, media type, run and task ...), and returns the stored artifact's
// metadata. Under auth, call it with the ctx of an attempt (WithStoreGrant) so the upload
// carries the attempt's grant. Errors are the store's gRPC status, or r's error.
func UploadArtifact(ctx context.Context, conn grpc.ClientConnInterface, header *dagwirev1.ArtifactHeader, r io.Reader) (*dagwirev1.Artifact, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := dagwirev1.NewArtifactStoreServiceClient(conn).PutArtifact(ctx)
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&dagwirev1.PutArtifactRequest{Part: &dagwirev1.PutArtifactRequest_Header{Header: header}}); err != nil {
		_, err = stream.CloseAndRecv() // the store's status, when it closed the stream
		return nil, err
	}
	buffer := make([]byte, uploadChunkBytes)
	for {
		n, readErr := io.ReadFull(r, buffer)
		if n > 0 {
			chunk := append([]byte(nil), buffer[:n]...)
			if err := stream.Send(&dagwirev1.PutArtifactRequest{Part: &dagwirev1.PutArtifactRequest_Chunk{Chunk: chunk}}); err != nil {
				_, err = stream.CloseAndRecv()
				return nil, err
			}
		}
		if readErr == io.EOF || readErr == io.ErrUnexpectedEOF {
			break
		}
		if readErr != nil {
			return nil, fmt.Errorf("artifact %s: reading the content to upload: %w", header.GetName(), readErr)
		}
	}
	reply, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	if reply.GetArtifact() == nil {
		return nil, fmt.Errorf("artifact %s: the store answered PutArtifact without an artifact", header.GetName())
	}
	return reply.GetArtifact(), nil
}
