package dagwire.client;

import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
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

  /** One resolved address, and where it came from (for error messages). */
  record Address(String hostPort, String source) {}

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
    Matcher match = HOST_PORT.matcher(value);
    if (!match.matches()) {
      throw CliException.badInput(
          source + ": '" + value + "' is not host:port (for example 127.0.0.1:50051)");
    }
    int port = Integer.parseInt(match.group(2));
    if (port < 1 || port > 65535) {
      throw CliException.badInput(source + ": '" + value + "': the port must be 1-65535");
    }
    return new Address(value, source);
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

  /**
   * A plaintext channel to one service, with the message limit and keepalive pings (every 30
   * s, as the dagwire servers accept) so a long WatchRun notices a dead connection.
   */
  static ManagedChannel channel(Address address, int maxMessageBytes) {
    return ManagedChannelBuilder.forTarget(address.hostPort())
        .usePlaintext()
        .maxInboundMessageSize(maxMessageBytes)
        .keepAliveTime(30, TimeUnit.SECONDS)
        .keepAliveTimeout(10, TimeUnit.SECONDS)
        .userAgent("dagwire-java-client")
        .build();
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
