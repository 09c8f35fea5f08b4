package dagwire.client;

import dagwire.v1.ArtifactStoreServiceGrpc;
import dagwire.v1.Common.Artifact;
import dagwire.v1.StoreService.GetArtifactRequest;
import dagwire.v1.StoreService.GetArtifactResponse;
import io.grpc.ManagedChannel;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.file.Files;
import java.nio.file.InvalidPathException;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.List;
import java.util.Set;

/**
 * {@code artifacts get ID [-o FILE] [--store HOST:PORT]}: streams one artifact from the store's
 * GetArtifact to a file (or stdout), checking its size and SHA-256 on the way.
 */
final class ArtifactCommand {
  static final String USAGE =
      String.join(
          "\n",
          "usage: artifacts get ARTIFACT_ID [-o FILE] [--store HOST:PORT] [--token-file PATH]",
          "",
          "Download one artifact's content to FILE (default: stdout), streamed, and check it",
          "against the size and sha256 the store recorded.",
          "",
          "  -o FILE             where to write the content (written whole or not at all)",
          "  --store HOST:PORT   the store (default $DAGWIRE_STORE_ADDR, else "
              + Settings.DEFAULT_STORE
              + ")",
          "  --token-file PATH   the bearer token (default $DAGWIRE_TOKEN, else the file",
          "                      $DAGWIRE_TOKEN_FILE names)",
          "");

  private static final String HINT = "--store / " + Settings.STORE_ENV;

  private final Settings settings;
  private final PrintStream out;
  private final PrintStream err;

  ArtifactCommand(Settings settings, PrintStream out, PrintStream err) {
    this.settings = settings;
    this.out = out;
    this.err = err;
  }

  int run(List<String> argv) throws CliException {
    if (argv.isEmpty() || !argv.get(0).equals("get")) {
      if (argv.contains("-h") || argv.contains("--help")) {
        out.print(USAGE);
        return 0;
      }
      throw CliException.badInput("artifacts: expected `artifacts get ARTIFACT_ID [-o FILE]`");
    }
    Arguments args =
        Arguments.parse("artifacts get", argv.subList(1, argv.size()), Set.of("-o", "--store", "--token-file"));
    if (args.help()) {
      out.print(USAGE);
      return 0;
    }
    String artifactId = args.onlyPositional("ARTIFACT_ID");
    String target = args.one("-o");
    Settings.Address address =
        settings.address(args.one("--store"), "--store", Settings.STORE_ENV, Settings.DEFAULT_STORE);
    int maxMessageBytes = settings.maxMessageBytes();
    Path path = null;
    Path partial = null;
    if (target != null && !target.equals("-")) {
      try {
        path = Path.of(target).toAbsolutePath();
      } catch (InvalidPathException e) {
        throw CliException.badInput("-o " + target + ": not a valid path");
      }
      if (path.getParent() == null || !Files.isDirectory(path.getParent())) {
        throw CliException.badInput("-o " + target + ": its directory does not exist");
      }
      partial = path.resolveSibling(path.getFileName() + ".part");
    }

    ManagedChannel channel = settings.channel(address, maxMessageBytes, args.one("--token-file"));
    try (OutputStream sink = partial == null ? unclosable(out) : Files.newOutputStream(partial)) {
      Iterator<GetArtifactResponse> stream =
          ArtifactStoreServiceGrpc.newBlockingStub(channel)
              .getArtifact(GetArtifactRequest.newBuilder().setArtifactId(artifactId).build());
      MessageDigest digest = MessageDigest.getInstance("SHA-256");
      Artifact meta = null;
      long size = 0;
      while (stream.hasNext()) {
        GetArtifactResponse part = stream.next();
        if (part.hasArtifact()) {
          meta = part.getArtifact();
        } else {
          byte[] chunk = part.getChunk().toByteArray();
          digest.update(chunk);
          sink.write(chunk);
          size += chunk.length;
        }
      }
      sink.flush();
      String sha256 = HexFormat.of().formatHex(digest.digest());
      if (meta != null && (meta.getSize() != size || !meta.getSha256().equals(sha256))) {
        throw new CliException(
            CliException.FAILED,
            "artifact "
                + artifactId
                + " arrived damaged: "
                + size
                + " bytes with sha256 "
                + sha256
                + ", the store recorded "
                + meta.getSize()
                + " bytes with sha256 "
                + meta.getSha256());
      }
      if (partial != null) {
        Files.move(partial, path, StandardCopyOption.REPLACE_EXISTING);
        partial = null;
        err.println("wrote " + size + " bytes (sha256 " + sha256 + ") to " + path);
      }
      return 0;
    } catch (StatusRuntimeException e) {
      throw RpcErrors.toCli(e, "store", address, HINT, "send artifact " + artifactId);
    } catch (IOException e) {
      throw new CliException(
          CliException.FAILED, "cannot write artifact " + artifactId + ": " + e.getMessage());
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("this Java runtime has no SHA-256", e);
    } finally {
      if (partial != null) {
        try {
          Files.deleteIfExists(partial);
        } catch (IOException e) {
          err.println("could not remove " + partial + ": " + e.getMessage());
        }
      }
      Settings.close(channel);
    }
  }

  /** Stdout for the download, left open when the download's stream is closed. */
  private static OutputStream unclosable(PrintStream stream) {
    return new OutputStream() {
      @Override
      public void write(int b) {
        stream.write(b);
      }

      @Override
      public void write(byte[] bytes, int offset, int length) {
        stream.write(bytes, offset, length);
      }

      @Override
      public void flush() {
        stream.flush();
      }
    };
  }
}
