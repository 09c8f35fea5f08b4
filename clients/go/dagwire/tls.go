package dagwire

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"

	"google.golang.org/grpc/credentials"
)

// TLS is the TLS side of a process's settings, from the DAGWIRE_TLS_* environment
// (docs/security.md): every empty field is unset, and all of them unset is plaintext.
// They have no flags: a process holds a server and many client channels, and all of them
// read the same variables, so they agree.
type TLS struct {
	// Cert and Key (DAGWIRE_TLS_CERT, DAGWIRE_TLS_KEY): a server serves TLS only with them;
	// a client uses them as its identity when ClientCert is unset.
	Cert, Key string
	// ClientCA (DAGWIRE_TLS_CLIENT_CA): a server requires client certificates it signed.
	ClientCA string
	// CA (DAGWIRE_TLS_CA): a client dials TLS and trusts this CA for servers.
	CA string
	// ServerName (DAGWIRE_TLS_SERVER_NAME): the name checked in servers' certificates for
	// dns: and ipv4: targets (a host:port target is checked against its host).
	ServerName string
	// ClientCert and ClientKey (DAGWIRE_TLS_CLIENT_CERT, DAGWIRE_TLS_CLIENT_KEY): a client's
	// own certificate and key; with them and no CA, the client trusts the system's roots.
	ClientCert, ClientKey string
	// HealthAddr (DAGWIRE_HEALTH_ADDR): a plaintext host:port serving grpc.health.v1 alone.
	HealthAddr string
}

// TLSFromEnv reads the DAGWIRE_TLS_* settings and DAGWIRE_HEALTH_ADDR. It checks how they
// fit together (a certificate without its key, a client CA without a server certificate);
// the files themselves are read by ServerCredentials and ClientCredentials.
func TLSFromEnv() (TLS, error) {
	s := TLS{
		Cert: Env("DAGWIRE_TLS_CERT", ""), Key: Env("DAGWIRE_TLS_KEY", ""),
		ClientCA: Env("DAGWIRE_TLS_CLIENT_CA", ""), CA: Env("DAGWIRE_TLS_CA", ""),
		ServerName: Env("DAGWIRE_TLS_SERVER_NAME", ""),
		ClientCert: Env("DAGWIRE_TLS_CLIENT_CERT", ""), ClientKey: Env("DAGWIRE_TLS_CLIENT_KEY", ""),
		HealthAddr: Env("DAGWIRE_HEALTH_ADDR", ""),
	}
	if err := pair(s.Cert, "DAGWIRE_TLS_CERT", s.Key, "DAGWIRE_TLS_KEY"); err != nil {
		return s, err
	}
	if err := pair(s.ClientCert, "DAGWIRE_TLS_CLIENT_CERT", s.ClientKey, "DAGWIRE_TLS_CLIENT_KEY"); err != nil {
		return s, err
	}
	if s.ClientCA != "" && s.Cert == "" {
		return s, errors.New("DAGWIRE_TLS_CLIENT_CA is set but DAGWIRE_TLS_CERT and DAGWIRE_TLS_KEY are not: " +
			"a server checks client certificates only when it serves TLS")
	}
	if s.HealthAddr != "" {
		if err := CheckAddress("DAGWIRE_HEALTH_ADDR", s.HealthAddr); err != nil {
			return s, err
		}
	}
	return s, nil
}

func pair(first, firstName, second, secondName string) error {
	if (first == "") == (second == "") {
		return nil
	}
	given, missing := firstName, secondName
	if first == "" {
		given, missing = secondName, firstName
	}
	return fmt.Errorf("%s is set but %s is not: set both or neither", given, missing)
}

// ServesTLS says whether a server of this process serves TLS (only).
func (s TLS) ServesTLS() bool { return s.Cert != "" }

// DialsTLS says whether this process's client channels use TLS.
func (s TLS) DialsTLS() bool { return s.CA != "" || s.ClientCert != "" }

// ClientCredentials are the transport credentials of a new client channel, from the files as
// they are now (a channel made after a rotation uses the new files; an open one keeps its
// credentials). A missing, unreadable or invalid file is an error naming setting and path.
func (s TLS) ClientCredentials() (credentials.TransportCredentials, error) {
	config := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.CA != "" {
		pool, err := readPool(s.CA, "DAGWIRE_TLS_CA")
		if err != nil {
			return nil, err
		}
		config.RootCAs = pool
	}
	cert, certName, key, keyName := s.ClientCert, "DAGWIRE_TLS_CLIENT_CERT", s.ClientKey, "DAGWIRE_TLS_CLIENT_KEY"
	if cert == "" {
		cert, certName, key, keyName = s.Cert, "DAGWIRE_TLS_CERT", s.Key, "DAGWIRE_TLS_KEY"
	}
	if cert != "" {
		identity, err := readIdentity(cert, certName, key, keyName)
		if err != nil {
			return nil, err
		}
		config.Certificates = []tls.Certificate{identity}
	}
	return credentials.NewTLS(config), nil
}

// namedTarget says whether DAGWIRE_TLS_SERVER_NAME applies to target (dns: and ipv4:).
func namedTarget(target string) bool {
	return strings.HasPrefix(target, "dns:") || strings.HasPrefix(target, "ipv4:") || strings.HasPrefix(target, "ipv6:")
}

// Check reads and checks every file the settings name, as a process does at start-up.
func (s TLS) Check() error {
	if s.ServesTLS() {
		if _, err := loadServerFiles(s.Cert, s.Key, s.ClientCA); err != nil {
			return err
		}
	}
	if s.DialsTLS() {
		if _, err := s.ClientCredentials(); err != nil {
			return err
		}
	}
	return nil
}

// ServerCredentials are the credentials of a server serving TLS only (mTLS with ClientCA).
// The files are checked before every new TLS connection (one stat of each) and read again
// when one changed, so a rotated certificate is used without a restart; files that changed
// but do not load yet (a new certificate next to the old key) are logged and the previous
// ones stay in use. An error names the setting and path of a file that cannot be used now.
func (s TLS) ServerCredentials(logger *slog.Logger) (credentials.TransportCredentials, error) {
	if !s.ServesTLS() {
		return nil, errors.New("DAGWIRE_TLS_CERT and DAGWIRE_TLS_KEY are not set")
	}
	if logger == nil {
		logger = slog.Default()
	}
	files := &serverFiles{cert: s.Cert, key: s.Key, clientCA: s.ClientCA, log: logger}
	files.seen = signature(files.paths()...)
	config, err := loadServerFiles(s.Cert, s.Key, s.ClientCA)
	if err != nil {
		return nil, err
	}
	files.config = config
	return credentials.NewTLS(&tls.Config{
		MinVersion:         tls.VersionTLS12,
		NextProtos:         []string{"h2"},
		GetConfigForClient: files.current,
	}), nil
}

// serverFiles holds a server's last good configuration and what its files looked like.
type serverFiles struct {
	cert, key, clientCA string
	log                 *slog.Logger
	mu                  sync.Mutex
	seen                []fileSignature
	config              *tls.Config
}

func (f *serverFiles) paths() []string { return []string{f.cert, f.key, f.clientCA} }

// current is the configuration for a new connection: the last good one, after re-reading
// the files if their stat changed.
func (f *serverFiles) current(*tls.ClientHelloInfo) (*tls.Config, error) {
	now := signature(f.paths()...)
	f.mu.Lock()
	defer f.mu.Unlock()
	if equalSignatures(now, f.seen) {
		return f.config, nil
	}
	f.seen = now
	config, err := loadServerFiles(f.cert, f.key, f.clientCA)
	if err != nil {
		f.log.Warn("TLS certificate files changed but cannot be used yet: " + err.Error())
		return f.config, nil
	}
	f.config = config
	f.log.Info("TLS certificate files changed: new connections use them", "cert", f.cert)
	return f.config, nil
}

func loadServerFiles(cert, key, clientCA string) (*tls.Config, error) {
	identity, err := readIdentity(cert, "DAGWIRE_TLS_CERT", key, "DAGWIRE_TLS_KEY")
	if err != nil {
		return nil, err
	}
	config := &tls.Config{
		MinVersion: tls.VersionTLS12, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{identity},
	}
	if clientCA != "" {
		pool, err := readPool(clientCA, "DAGWIRE_TLS_CLIENT_CA")
		if err != nil {
			return nil, err
		}
		config.ClientCAs = pool
		config.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return config, nil
}

type fileSignature struct {
	ok    bool
	inode uint64
	size  int64
	mtime int64
}

// signature is what changes when a file is rewritten or replaced: inode, size and mtime.
func signature(paths ...string) []fileSignature {
	out := make([]fileSignature, len(paths))
	for i, path := range paths {
		if path == "" {
			continue
		}
		info, err := os.Stat(path)
		if err != nil {
			continue
		}
		out[i] = fileSignature{ok: true, size: info.Size(), mtime: info.ModTime().UnixNano()}
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			out[i].inode = st.Ino
		}
	}
	return out
}

func equalSignatures(a, b []fileSignature) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// readFile reads a TLS file; the error names the setting and the path, as the Python side
// words it: cannot read DAGWIRE_TLS_CERT='/x': No such file or directory.
func readFile(path, setting string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		return data, nil
	}
	reason := err.Error()
	var errno syscall.Errno
	var pathErr *fs.PathError
	switch {
	case errors.As(err, &errno):
		reason = errno.Error()
	case errors.As(err, &pathErr):
		reason = pathErr.Err.Error()
	}
	if reason != "" {
		reason = strings.ToUpper(reason[:1]) + reason[1:]
	}
	return nil, fmt.Errorf("cannot read %s='%s': %s", setting, path, reason)
}

func readPool(path, setting string) (*x509.CertPool, error) {
	data, err := readFile(path, setting)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("invalid %s='%s': not a PEM certificate (-----BEGIN CERTIFICATE-----)", setting, path)
	}
	return pool, nil
}

func readIdentity(certPath, certSetting, keyPath, keySetting string) (tls.Certificate, error) {
	certPEM, err := readFile(certPath, certSetting)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyPEM, err := readFile(keyPath, keySetting)
	if err != nil {
		return tls.Certificate{}, err
	}
	if block, _ := pem.Decode(certPEM); block == nil || block.Type != "CERTIFICATE" {
		return tls.Certificate{}, fmt.Errorf("invalid %s='%s': not a PEM certificate (-----BEGIN CERTIFICATE-----)", certSetting, certPath)
	}
	block, _ := pem.Decode(keyPEM)
	switch {
	case block == nil || !strings.HasSuffix(block.Type, "PRIVATE KEY"):
		return tls.Certificate{}, fmt.Errorf("invalid %s='%s': not a PEM private key", keySetting, keyPath)
	case block.Type == "ENCRYPTED PRIVATE KEY" || block.Headers["Proc-Type"] != "":
		return tls.Certificate{}, fmt.Errorf("invalid %s='%s': it is encrypted", keySetting, keyPath)
	}
	identity, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		if strings.Contains(err.Error(), "does not match") {
			return tls.Certificate{}, fmt.Errorf("invalid %s='%s': it is not the key of the certificate in %s='%s'",
				keySetting, keyPath, certSetting, certPath)
		}
		return tls.Certificate{}, fmt.Errorf("invalid %s='%s' or %s='%s': %v", certSetting, certPath, keySetting, keyPath, err)
	}
	return identity, nil
}

// ExplainConnectFailure says what a failed connection's message means in TLS terms, naming
// the setting to look at, or "" when it is not about TLS. dialsTLS is the client's mode.
func ExplainConnectFailure(message string, dialsTLS bool) string {
	lowered := strings.ToLower(message)
	switch {
	case strings.Contains(lowered, "certificate signed by unknown authority") ||
		strings.Contains(lowered, "failed to verify certificate") && !strings.Contains(lowered, "valid for"):
		return "TLS: the server's certificate is not signed by the CA this client trusts (DAGWIRE_TLS_CA)"
	case strings.Contains(lowered, "certificate is valid for") || strings.Contains(lowered, "not valid for any names"):
		return "TLS: the server's certificate does not carry the name dialled (set DAGWIRE_TLS_SERVER_NAME to a name it carries)"
	case strings.Contains(lowered, "first record does not look like a tls handshake"):
		return "TLS handshake failed (does the server serve TLS?)"
	case strings.Contains(lowered, "certificate required") || strings.Contains(lowered, "bad certificate") ||
		strings.Contains(lowered, "unknown certificate authority") || strings.Contains(lowered, "unknown ca"):
		return "the server refused this client's certificate; it may require a client certificate (DAGWIRE_TLS_CLIENT_CERT) signed by its client CA"
	case strings.Contains(lowered, "handshake"), strings.Contains(lowered, "eof"),
		strings.Contains(lowered, "connection reset"), strings.Contains(lowered, "server preface"),
		strings.Contains(lowered, "broken pipe"):
		// Under TLS 1.3 a refused client certificate shows up after the handshake, as the
		// server closing the connection before its HTTP/2 preface.
		if dialsTLS {
			return "the server closed the connection during the TLS handshake; it may require a client certificate (DAGWIRE_TLS_CLIENT_CERT) signed by its client CA"
		}
		return "the server closed the connection; if it serves TLS, set DAGWIRE_TLS_CA to its CA"
	}
	return ""
}

// hostOf is the host of a host:port address (the address itself when it has no port).
func hostOf(address string) string {
	host, _, err := net.SplitHostPort(address)
	if err != nil {
		return address
	}
	return host
}
