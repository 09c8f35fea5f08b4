package dagwire

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/credentials"
)

// TokenFromEnv is the bearer token a client sends (docs/security.md): the content of
// tokenFile (a CLI's --token-file) when given, else DAGWIRE_TOKEN, else the content of the
// file named by DAGWIRE_TOKEN_FILE; "" when none is set. Trailing whitespace and newlines of
// a file are dropped. A file that cannot be read, or is empty, is an error naming the
// setting and the path.
func TokenFromEnv(tokenFile string) (string, error) {
	if tokenFile != "" {
		return readToken(tokenFile, "--token-file")
	}
	if token := Env("DAGWIRE_TOKEN", ""); token != "" {
		return token, nil
	}
	if path := Env("DAGWIRE_TOKEN_FILE", ""); path != "" {
		return readToken(path, "DAGWIRE_TOKEN_FILE")
	}
	return "", nil
}

func readToken(path, setting string) (string, error) {
	data, err := readFile(path, setting)
	if err != nil {
		return "", err
	}
	token := strings.TrimRight(string(data), " \t\r\n")
	if token == "" {
		return "", fmt.Errorf("invalid %s='%s': the file is empty", setting, path)
	}
	if strings.ContainsAny(token, "\r\n") {
		return "", fmt.Errorf("invalid %s='%s': the token must be one line", setting, path)
	}
	return token, nil
}

// storeServicePrefix starts the method names of the store's calls, the only calls an
// attempt's grant may be sent on (docs/security.md, "Store grants").
const storeServicePrefix = "/dagwire.v1.ArtifactStoreService/"

type storeGrantKey struct{}

// WithStoreGrant returns ctx carrying an attempt's store grant (ExecuteRequest.store_token,
// docs/security.md "Store grants"): the ArtifactStoreService calls made with it, on a channel
// from Dial, send `authorization: Bearer <grant>` instead of the process's own token. Calls to
// any other service keep the process's token. An empty grant returns ctx unchanged. The
// adapter toolkit (package adapter) does this for every Execute, so an agent's own store calls
// with the ctx it was given use the grant.
func WithStoreGrant(ctx context.Context, grant string) context.Context {
	if grant == "" {
		return ctx
	}
	return context.WithValue(ctx, storeGrantKey{}, grant)
}

// StoreGrant is the store grant ctx carries (WithStoreGrant), or "".
func StoreGrant(ctx context.Context) string {
	grant, _ := ctx.Value(storeGrantKey{}).(string)
	return grant
}

// bearer sends `authorization: Bearer <token>` with every call, or the store grant of the
// call's context on a store call (WithStoreGrant); nothing when it has neither. It is sent
// on plaintext channels too: a mesh may terminate TLS in a sidecar.
type bearer string

func (b bearer) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	if grant := StoreGrant(ctx); grant != "" {
		if info, ok := credentials.RequestInfoFromContext(ctx); ok && strings.HasPrefix(info.Method, storeServicePrefix) {
			return map[string]string{"authorization": "Bearer " + grant}, nil
		}
	}
	if b == "" {
		return nil, nil
	}
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }
