package dagwire

import (
	"context"
	"fmt"
	"strings"
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

// bearer sends `authorization: Bearer <token>` with every call. It is sent on plaintext
// channels too: a mesh may terminate TLS in a sidecar.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }
