package dagwire.client;

import io.grpc.Grpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Service addresses and channel limits: a flag wins over its {@code DAGWIRE_*} variable, which
 * wins over the loopback default.
 */
final class Settings {
  static final String ORCHESTRATOR_ENV = "DAGWIRE_ORCHESTRATOR_ADDR";
  static final String STORE_ENV = "DAGWIRE_STORE_ADDR";
  static final String MAX_MESSAGE_ENV = "DAGWIRE_MAX_MESSAGE_BYTES";
  static final String DEFAULT_ORCHESTRATOR = "127.0.0.1:50051";
  static final String DEFAULT_STORE = "127.0.0.1:50053";
  static final int DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

  private static final Pattern HOST_PORT =
      Pattern.compile("^(\\[[0-9A-Fa-f:.]+\\]|[A-Za-z0-9_.-]+):(\\d{1,5})$");

  private final Map<String, String> env;

  Settings(Map<String, String> env) {
    this.env = env;
  }

  /**
   * One resolved address, where it came from (for error messages), and whether the client
   * dials it over TLS (for the hints of a refused connection).
   */
  record Address(String hostPort, String source, boolean tls) {}

  /**
   * The address of a service.
   *
   * @param flagValue the flag's value, or null when the flag was not given
   * @param flag the flag's name, e.g. {@code --server}
   * @param envVar the variable consulted when the flag is absent
   * @param fallback the default when neither is set
   */
  Address address(String flagValue, String flag, String envVar, String fallback)
      throws CliException {
    String value;
    String source;
    if (flagValue != null) {
      value = flagValue;
      source = flag;
    } else if (env.getOrDefault(envVar, "").isBlank()) {
      value = fallback;
      source = "the default";
    } else {
      value = env.get(envVar);
      source = envVar;
    }
    value = value.strip();
    if (value.startsWith("dns:")) {
      return new Address(checkDns(value, source), source, security().dialsTls());
    }
    if (value.startsWith("ipv4:") || value.startsWith("ipv6:")) {
      throw CliException.badInput(
          source
              + ": '"
              + value
              + "': the Java client takes host:port or dns:///name:port (docs/targets.md)");
    }
    Matcher match = HOST_PORT.matcher(value);
    if (!match.matches()) {
      throw CliException.badInput(
          source + ": '" + value + "' is not host:port (for example 127.0.0.1:50051)");
    }
    int port = Integer.parseInt(match.group(2));
    if (port < 1 || port > 65535) {
      throw CliException.badInput(source + ": '" + value + "': the port must be 1-65535");
    }
    return new Address(value, source, security().dialsTls());
  }

  /**
   * A {@code dns:///name:port} (or {@code dns://authority/name:port}) target: every address of
   * the name, balanced round-robin (a Kubernetes headless service; see docs/targets.md).
   */
  private static String checkDns(String value, String source) throws CliException {
    String rest = value.substring("dns:".length());
    if (rest.startsWith("//")) {
      int slash = rest.indexOf('/', 2);
      rest = slash < 0 ? "" : rest.substring(slash + 1);
    }
    Matcher match = HOST_PORT.matcher(rest);
    int port = match.matches() ? Integer.parseInt(match.group(2)) : 0;
    if (port < 1 || port > 65535) {
      throw CliException.badInput(
          source
              + ": '"
              + value
              + "' is not dns:///name:port (the port is required; for example"
              + " dns:///dagwire-orchestrator:50051)");
    }
    return value;
  }

  /**
   * Round-robin over the target's addresses, and a retry on UNAVAILABLE (a replica died) of
   * the calls safe to repeat: reads, StartRun (idempotent by request_id) and CancelRun.
   */
  private static Map<String, Object> serviceConfig() {
    List<Map<String, Object>> names = new ArrayList<>();
    for (String method : List.of("StartRun", "GetRun", "ListRuns", "WatchRun", "CancelRun")) {
      names.add(Map.of("service", "dagwire.v1.OrchestratorService", "method", method));
    }
    for (String method : List.of("GetArtifact", "StatArtifact", "ListArtifacts")) {
      names.add(Map.of("service", "dagwire.v1.ArtifactStoreService", "method", method));
    }
    Map<String, Object> retry =
        Map.of(
            "maxAttempts", 4.0,
            "initialBackoff", "0.1s",
            "maxBackoff", "0.5s",
            "backoffMultiplier", 2.0,
            "retryableStatusCodes", List.of("UNAVAILABLE"));
    return Map.of(
        "loadBalancingConfig",
        List.of(Map.of("round_robin", Map.of())),
        "methodConfig",
        List.of(Map.of("name", names, "retryPolicy", retry)));
  }

  /** The send and receive limit per gRPC message, from {@code DAGWIRE_MAX_MESSAGE_BYTES}. */
  int maxMessageBytes() throws CliException {
    String raw = env.getOrDefault(MAX_MESSAGE_ENV, "").strip();
    if (raw.isEmpty()) {
      return DEFAULT_MAX_MESSAGE_BYTES;
    }
    try {
      int value = Integer.parseInt(raw);
      if (value > 0) {
        return value;
      }
    } catch (NumberFormatException e) {
      // reported below
    }
    throw CliException.badInput(
        MAX_MESSAGE_ENV + ": '" + raw + "' is not a positive number of bytes (default 16777216)");
  }

  /** TLS and the token, from the same environment. */
  Security security() {
    return new Security(env);
  }

  /**
   * A channel to one service, with the message limit and keepalive pings (every 30 s, as the
   * dagwire servers accept) so a long WatchRun notices a dead connection: plaintext, or TLS
   * when {@code DAGWIRE_TLS_*} ask for it, sending the bearer token with every call when there
   * is one (docs/security.md).
   *
   * @param tokenFile the {@code --token-file} flag, or null
   * @throws CliException (exit 2) for a TLS or token file that cannot be used
   */
  ManagedChannel channel(Address address, int maxMessageBytes, String tokenFile)
      throws CliException {
    Security security = security();
    String token = security.token(tokenFile);
    ManagedChannelBuilder<?> builder =
        Grpc.newChannelBuilder(address.hostPort(), security.credentials())
            .defaultServiceConfig(serviceConfig())
            .disableServiceConfigLookUp()
            .enableRetry()
            .maxInboundMessageSize(maxMessageBytes)
            .keepAliveTime(30, TimeUnit.SECONDS)
            .keepAliveTimeout(10, TimeUnit.SECONDS)
            .userAgent("dagwire-java-client");
    if (security.dialsTls() && security.serverName() != null && address.hostPort().startsWith("dns:")) {
      builder.overrideAuthority(security.serverName());
    }
    if (token != null) {
      builder.intercept(Security.bearer(token));
    }
    return builder.build();
  }

  /** Closes a channel, waiting briefly for calls to end. */
  static void close(ManagedChannel channel) {
    channel.shutdownNow();
    try {
      channel.awaitTermination(5, TimeUnit.SECONDS);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
    }
  }
}
