package dagwire.client;

import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ForwardingClientCall;
import io.grpc.InsecureChannelCredentials;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.TlsChannelCredentials;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.InvalidPathException;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.security.GeneralSecurityException;
import java.security.KeyFactory;
import java.security.PrivateKey;
import java.security.Signature;
import java.security.cert.Certificate;
import java.security.cert.CertificateException;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collection;
import java.util.List;
import java.util.Locale;
import java.util.Map;

/**
 * TLS, mTLS and the bearer token of the client's channels, from the environment as
 * docs/security.md describes (the same variables as every dagwire client):
 *
 * <ul>
 *   <li>{@code DAGWIRE_TLS_CA}: dial TLS, trusting this CA for servers;
 *   <li>{@code DAGWIRE_TLS_CLIENT_CERT} / {@code DAGWIRE_TLS_CLIENT_KEY}: the client's identity
 *       (mTLS), else {@code DAGWIRE_TLS_CERT} / {@code DAGWIRE_TLS_KEY}; with a client
 *       certificate and no CA, the JDK's default roots are trusted;
 *   <li>{@code DAGWIRE_TLS_SERVER_NAME}: the name checked for {@code dns:} targets;
 *   <li>{@code DAGWIRE_TOKEN}, else the file {@code DAGWIRE_TOKEN_FILE} names (a {@code
 *       --token-file} flag wins over both): sent as {@code authorization: Bearer <token>}.
 * </ul>
 *
 * <p>Keys must be PKCS#8 PEM ({@code -----BEGIN PRIVATE KEY-----}), the one form Netty loads.
 * Every file is read and checked when a channel is made; a bad one is bad input (exit 2) on one
 * line naming the setting and the path.
 */
final class Security {
  private final Map<String, String> env;

  Security(Map<String, String> env) {
    this.env = env;
  }

  private String get(String name) {
    String value = env.getOrDefault(name, "").strip();
    return value.isEmpty() ? null : value;
  }

  /** Whether the channels dial TLS: a CA or a client certificate is set. */
  boolean dialsTls() {
    return get("DAGWIRE_TLS_CA") != null || get("DAGWIRE_TLS_CLIENT_CERT") != null;
  }

  /** {@code DAGWIRE_TLS_SERVER_NAME}, or null. */
  String serverName() {
    return get("DAGWIRE_TLS_SERVER_NAME");
  }

  /** The credentials of a new channel, from the files as they are now. */
  ChannelCredentials credentials() throws CliException {
    pair("DAGWIRE_TLS_CERT", "DAGWIRE_TLS_KEY");
    pair("DAGWIRE_TLS_CLIENT_CERT", "DAGWIRE_TLS_CLIENT_KEY");
    if (!dialsTls()) {
      return InsecureChannelCredentials.create();
    }
    TlsChannelCredentials.Builder builder = TlsChannelCredentials.newBuilder();
    String ca = get("DAGWIRE_TLS_CA");
    try {
      if (ca != null) {
        byte[] roots = read(ca, "DAGWIRE_TLS_CA");
        certificates(roots, ca, "DAGWIRE_TLS_CA");
        builder.trustManager(new ByteArrayInputStream(roots));
      }
      String certName = "DAGWIRE_TLS_CLIENT_CERT";
      String keyName = "DAGWIRE_TLS_CLIENT_KEY";
      if (get(certName) == null) {
        certName = "DAGWIRE_TLS_CERT";
        keyName = "DAGWIRE_TLS_KEY";
      }
      String certPath = get(certName);
      if (certPath != null) {
        String keyPath = get(keyName);
        byte[] chain = read(certPath, certName);
        byte[] key = read(keyPath, keyName);
        checkIdentity(chain, certPath, certName, key, keyPath, keyName);
        builder.keyManager(new ByteArrayInputStream(chain), new ByteArrayInputStream(key));
      }
    } catch (IOException e) {
      throw CliException.badInput("cannot use the TLS files: " + e.getMessage());
    }
    return builder.build();
  }

  private void pair(String first, String second) throws CliException {
    boolean hasFirst = get(first) != null;
    if (hasFirst != (get(second) != null)) {
      String given = hasFirst ? first : second;
      String missing = hasFirst ? second : first;
      throw CliException.badInput(given + " is set but " + missing + " is not: set both or neither");
    }
  }

  /**
   * The bearer token: the content of {@code tokenFile} (the {@code --token-file} flag) when
   * given, else {@code DAGWIRE_TOKEN}, else the content of {@code DAGWIRE_TOKEN_FILE}; null when
   * none is set. A file's trailing whitespace and newlines are dropped.
   */
  String token(String tokenFile) throws CliException {
    if (tokenFile != null) {
      return readToken(tokenFile, "--token-file");
    }
    String token = get("DAGWIRE_TOKEN");
    if (token != null) {
      return token;
    }
    String path = get("DAGWIRE_TOKEN_FILE");
    return path == null ? null : readToken(path, "DAGWIRE_TOKEN_FILE");
  }

  private static String readToken(String path, String setting) throws CliException {
    String token = new String(read(path, setting), StandardCharsets.UTF_8).stripTrailing();
    if (token.isEmpty()) {
      throw CliException.badInput("invalid " + setting + "='" + path + "': the file is empty");
    }
    if (token.contains("\n") || token.contains("\r")) {
      throw CliException.badInput(
          "invalid " + setting + "='" + path + "': the token must be one line");
    }
    return token;
  }

  /** Sends {@code authorization: Bearer <token>} with every call. */
  static ClientInterceptor bearer(String token) {
    Metadata.Key<String> key = Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);
    return new ClientInterceptor() {
      @Override
      public <Q, R> ClientCall<Q, R> interceptCall(
          MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
        return new ForwardingClientCall.SimpleForwardingClientCall<Q, R>(
            next.newCall(method, options)) {
          @Override
          public void start(Listener<R> listener, Metadata headers) {
            headers.put(key, "Bearer " + token);
            super.start(listener, headers);
          }
        };
      }
    };
  }

  private static byte[] read(String path, String setting) throws CliException {
    try {
      return Files.readAllBytes(Path.of(path));
    } catch (NoSuchFileException e) {
      throw cannotRead(path, setting, "No such file or directory");
    } catch (AccessDeniedException e) {
      throw cannotRead(path, setting, "Permission denied");
    } catch (IOException | InvalidPathException e) {
      throw cannotRead(path, setting, e.getMessage());
    }
  }

  private static CliException cannotRead(String path, String setting, String why) {
    return CliException.badInput("cannot read " + setting + "='" + path + "': " + why);
  }

  private static List<X509Certificate> certificates(byte[] pem, String path, String setting)
      throws CliException {
    List<X509Certificate> out = new ArrayList<>();
    try {
      Collection<? extends Certificate> parsed =
          CertificateFactory.getInstance("X.509")
              .generateCertificates(new ByteArrayInputStream(pem));
      for (Certificate certificate : parsed) {
        out.add((X509Certificate) certificate);
      }
    } catch (CertificateException | ClassCastException e) {
      out.clear();
    }
    if (out.isEmpty() || !new String(pem, StandardCharsets.US_ASCII).contains("-----BEGIN")) {
      throw CliException.badInput(
          "invalid "
              + setting
              + "='"
              + path
              + "': not a PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    return out;
  }

  /** The certificate parses, the key is PKCS#8 and unencrypted, and it is the certificate's. */
  private static void checkIdentity(
      byte[] chain, String certPath, String certName, byte[] key, String keyPath, String keyName)
      throws CliException {
    X509Certificate leaf = certificates(chain, certPath, certName).get(0);
    String text = new String(key, StandardCharsets.US_ASCII);
    String invalid = "invalid " + keyName + "='" + keyPath + "': ";
    if (text.contains("ENCRYPTED")) {
      throw CliException.badInput(invalid + "it is encrypted");
    }
    String begin = "-----BEGIN PRIVATE KEY-----";
    int start = text.indexOf(begin);
    int end = text.indexOf("-----END PRIVATE KEY-----");
    if (start < 0 || end < start) {
      if (text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----")) {
        throw CliException.badInput(
            invalid
                + "not PKCS#8 ("
                + begin
                + "), the one form Java loads; convert it with"
                + " `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`");
      }
      throw CliException.badInput(invalid + "not a PEM private key");
    }
    String algorithm = leaf.getPublicKey().getAlgorithm();
    PrivateKey privateKey;
    try {
      byte[] der = Base64.getMimeDecoder().decode(text.substring(start + begin.length(), end));
      privateKey = KeyFactory.getInstance(algorithm).generatePrivate(new PKCS8EncodedKeySpec(der));
    } catch (GeneralSecurityException | IllegalArgumentException e) {
      throw CliException.badInput(
          invalid
              + "not a PEM private key of the certificate's kind ("
              + algorithm
              + ") in "
              + certName
              + "='"
              + certPath
              + "'");
    }
    String signing =
        switch (algorithm.toUpperCase(Locale.ROOT)) {
          case "EC" -> "SHA256withECDSA";
          case "RSA" -> "SHA256withRSA";
          default -> null;
        };
    if (signing == null) {
      return; // another kind of key: Netty's handshake checks the pair
    }
    try {
      byte[] probe = "dagwire".getBytes(StandardCharsets.US_ASCII);
      Signature signer = Signature.getInstance(signing);
      signer.initSign(privateKey);
      signer.update(probe);
      byte[] signature = signer.sign();
      Signature verifier = Signature.getInstance(signing);
      verifier.initVerify(leaf.getPublicKey());
      verifier.update(probe);
      if (verifier.verify(signature)) {
        return;
      }
    } catch (GeneralSecurityException e) {
      // reported below
    }
    throw CliException.badInput(
        invalid + "it is not the key of the certificate in " + certName + "='" + certPath + "'");
  }

  /**
   * What a failed connection means in TLS terms, naming the setting to look at, or null when it
   * is not about TLS.
   */
  static String explain(Status status, boolean tls) {
    StringBuilder text = new StringBuilder(String.valueOf(status.getDescription()));
    for (Throwable cause = status.getCause(); cause != null; cause = cause.getCause()) {
      text.append(' ').append(cause.getClass().getSimpleName()).append(' ').append(cause.getMessage());
    }
    String lowered = text.toString().toLowerCase(Locale.ROOT);
    if (lowered.contains("pkix path") || lowered.contains("unable to find valid certification path")) {
      return "TLS: the server's certificate is not signed by the CA this client trusts (DAGWIRE_TLS_CA)";
    }
    if (lowered.contains("no subject alternative") || lowered.contains("no name matching")) {
      return "TLS: the server's certificate does not carry the name dialled (set"
          + " DAGWIRE_TLS_SERVER_NAME to a name it carries)";
    }
    if (lowered.contains("notsslrecordexception") || lowered.contains("not an ssl/tls record")) {
      return "TLS handshake failed (does the server serve TLS?)";
    }
    if (lowered.contains("certificate_required")
        || lowered.contains("bad_certificate")
        || lowered.contains("unknown_ca")) {
      return "the server refused this client's TLS connection; it may require a client certificate"
          + " (DAGWIRE_TLS_CLIENT_CERT) signed by its client CA";
    }
    boolean closed =
        lowered.contains("network closed")
            || lowered.contains("connection reset")
            || lowered.contains("broken pipe");
    if (lowered.contains("ssl") || lowered.contains("handshake") || (tls && closed)) {
      // under TLS 1.3 an mTLS server refuses a client certificate after the client's side of
      // the handshake: the client only sees the connection closed
      return tls
          ? "the server closed the connection during the TLS handshake; it may require a client"
              + " certificate (DAGWIRE_TLS_CLIENT_CERT) signed by its client CA"
          : "TLS handshake failed (does the server serve TLS?)";
    }
    if (closed) {
      return "the server closed the connection; if it serves TLS, set DAGWIRE_TLS_CA to its CA";
    }
    return null;
  }

  /**
   * A refused connection's own words on one line: the status description's first line (Netty
   * appends its channel pipeline on the next ones) and the innermost cause's message.
   */
  static String reason(Status status) {
    String description = firstLine(status.getDescription());
    Throwable root = status.getCause();
    while (root != null && root.getCause() != null && root.getCause() != root) {
      root = root.getCause();
    }
    String cause = root == null ? "" : firstLine(root.getMessage());
    if (cause.isEmpty() || description.contains(cause)) {
      return description;
    }
    return description.isEmpty() ? cause : description + ": " + cause;
  }

  private static String firstLine(String text) {
    if (text == null) {
      return "";
    }
    int newline = text.indexOf('\n');
    return (newline < 0 ? text : text.substring(0, newline)).strip();
  }
}
