package dagwire.client;

import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.PrintStream;
import java.math.BigInteger;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.List;
import java.util.Set;

/**
 * dagwire's Java client command: {@code run} a workflow and follow it, {@code artifacts get} an
 * output, or compute the {@code blob-sha256} of the toolbox's blob agent.
 *
 * <p>Results go to stdout, progress and errors to stderr (both UTF-8, whatever the locale).
 */
public final class Main {
  static final String USAGE =
      String.join(
          "\n",
          "usage: java -jar dagwire-java-client.jar COMMAND [ARGS]",
          "",
          "commands:",
          "  run FILE [--var KEY=VALUE]... [--server HOST:PORT]",
          "      start a workflow, follow it, print its summary as JSON",
          "  artifacts get ARTIFACT_ID [-o FILE] [--store HOST:PORT]",
          "      download an artifact's content",
          "  blob-sha256 --size N [--seed S]",
          "      sha256 of the toolbox `blob` agent's content for these params",
          "",
          "COMMAND --help says more. Addresses default to $DAGWIRE_ORCHESTRATOR_ADDR and",
          "$DAGWIRE_STORE_ADDR, else 127.0.0.1:50051 and 127.0.0.1:50053.",
          "");

  static final String BLOB_USAGE =
      String.join(
          "\n",
          "usage: blob-sha256 --size N [--seed S]",
          "",
          "Print the lowercase hex sha256 of what the toolbox's `blob` agent produces with",
          "params {size: N, seed: S} (S defaults to 0), computed here in constant memory.",
          "");

  private Main() {}

  public static void main(String[] argv) {
    PrintStream out = utf8(FileDescriptor.out);
    PrintStream err = utf8(FileDescriptor.err);
    int status;
    try {
      status = run(Arrays.asList(NativeArgs.recover(argv)), out, err);
    } catch (CliException e) {
      err.println("error: " + e.getMessage());
      status = e.exitCode();
    }
    out.flush();
    err.flush();
    System.exit(status);
  }

  static int run(List<String> args, PrintStream out, PrintStream err) throws CliException {
    if (args.isEmpty()) {
      err.print(USAGE);
      return CliException.BAD_INPUT;
    }
    Settings settings = new Settings(System.getenv());
    List<String> rest = args.subList(1, args.size());
    switch (args.get(0)) {
      case "run":
        return new RunCommand(settings, out, err).run(rest);
      case "artifacts":
        return new ArtifactCommand(settings, out, err).run(rest);
      case "blob-sha256":
        return blobSha256(rest, out);
      case "-h":
      case "--help":
      case "help":
        out.print(USAGE);
        return 0;
      default:
        throw CliException.badInput(
            "unknown command '" + args.get(0) + "' (commands: run, artifacts, blob-sha256)");
    }
  }

  private static int blobSha256(List<String> argv, PrintStream out) throws CliException {
    Arguments args = Arguments.parse("blob-sha256", argv, Set.of("--size", "--seed"));
    if (args.help()) {
      out.print(BLOB_USAGE);
      return 0;
    }
    if (!args.positional().isEmpty()) {
      throw CliException.badInput(
          "blob-sha256: unexpected argument '" + args.positional().get(0) + "'");
    }
    String size = args.one("--size");
    if (size == null) {
      throw CliException.badInput("blob-sha256: --size N is required (bytes, at least 0)");
    }
    long bytes;
    try {
      bytes = Long.parseLong(size.strip());
    } catch (NumberFormatException e) {
      bytes = -1;
    }
    if (bytes < 0) {
      throw CliException.badInput(
          "blob-sha256: --size '" + size + "' is not a whole number of bytes, at least 0");
    }
    String seedText = args.one("--seed");
    BigInteger seed;
    try {
      seed = seedText == null ? BigInteger.ZERO : new BigInteger(seedText.strip());
    } catch (NumberFormatException e) {
      throw CliException.badInput("blob-sha256: --seed '" + seedText + "' is not an integer");
    }
    out.println(Blob.sha256Hex(bytes, seed));
    return 0;
  }

  private static PrintStream utf8(FileDescriptor descriptor) {
    return new PrintStream(new FileOutputStream(descriptor), true, StandardCharsets.UTF_8);
  }
}
