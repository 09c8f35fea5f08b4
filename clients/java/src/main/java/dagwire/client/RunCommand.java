package dagwire.client;

import dagwire.v1.Common.Run;
import dagwire.v1.Common.RunEvent;
import dagwire.v1.Common.RunStatus;
import dagwire.v1.OrchestratorServiceGrpc;
import dagwire.v1.OrchestratorServiceGrpc.OrchestratorServiceBlockingStub;
import dagwire.v1.OrchestratorServiceOuterClass.GetRunRequest;
import dagwire.v1.OrchestratorServiceOuterClass.StartRunRequest;
import dagwire.v1.OrchestratorServiceOuterClass.StartRunResponse;
import dagwire.v1.OrchestratorServiceOuterClass.WatchRunRequest;
import dagwire.v1.OrchestratorServiceOuterClass.WatchRunResponse;
import io.grpc.ManagedChannel;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.InvalidPathException;
import java.nio.file.NoSuchFileException;
import java.nio.file.Path;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.regex.Pattern;

/**
 * {@code run FILE [--var KEY=VALUE]... [--server HOST:PORT]}: starts a workflow with StartRun,
 * follows it with WatchRun (one line per event on stderr), then prints the run's summary, read
 * with GetRun, as JSON on stdout. Exit 0 when the run succeeded, 1 when it failed or was
 * cancelled.
 */
final class RunCommand {
  static final String USAGE =
      String.join(
          "\n",
          "usage: run FILE [--var KEY=VALUE]... [--server HOST:PORT] [--token-file PATH]",
          "",
          "Start the workflow in FILE (YAML or JSON; - reads stdin), follow it live (one line per",
          "event on stderr) and print its summary as JSON on stdout.",
          "",
          "  --var KEY=VALUE     value for ${user.KEY} in the spec (repeatable)",
          "  --server HOST:PORT  the orchestrator (default $DAGWIRE_ORCHESTRATOR_ADDR, else "
              + Settings.DEFAULT_ORCHESTRATOR
              + ")",
          "  --token-file PATH   the bearer token (default $DAGWIRE_TOKEN, else the file",
          "                      $DAGWIRE_TOKEN_FILE names); TLS: $DAGWIRE_TLS_CA,",
          "                      $DAGWIRE_TLS_CLIENT_CERT/_KEY, $DAGWIRE_TLS_SERVER_NAME",
          "",
          "Exit status: 0 the run succeeded, 1 it failed or was cancelled, 2 bad input,",
          "3 the orchestrator cannot be reached, 4 it refused the credentials.",
          "");

  private static final Pattern VAR_NAME = Pattern.compile("[A-Za-z_][A-Za-z0-9_]*");
  private static final long UNARY_DEADLINE_SECONDS = 30;
  private static final long RECONNECT_SECONDS = 30;
  private static final String HINT = "--server / " + Settings.ORCHESTRATOR_ENV;

  private final Settings settings;
  private final PrintStream out;
  private final PrintStream err;

  RunCommand(Settings settings, PrintStream out, PrintStream err) {
    this.settings = settings;
    this.out = out;
    this.err = err;
  }

  int run(List<String> argv) throws CliException {
    Arguments args = Arguments.parse("run", argv, Set.of("--var", "--server", "--token-file"));
    if (args.help()) {
      out.print(USAGE);
      return 0;
    }
    String file = args.onlyPositional("workflow spec FILE");
    Map<String, String> vars = parseVars(args.all("--var"));
    Settings.Address address =
        settings.address(
            args.one("--server"),
            "--server",
            Settings.ORCHESTRATOR_ENV,
            Settings.DEFAULT_ORCHESTRATOR);
    int maxMessageBytes = settings.maxMessageBytes();
    String spec = readSpec(file);

    ManagedChannel channel = settings.channel(address, maxMessageBytes, args.one("--token-file"));
    try {
      OrchestratorServiceBlockingStub stub =
          OrchestratorServiceGrpc.newBlockingStub(channel)
              .withMaxOutboundMessageSize(maxMessageBytes);
      StartRunResponse started;
      try {
        started =
            stub.withDeadlineAfter(UNARY_DEADLINE_SECONDS, TimeUnit.SECONDS)
                .startRun(
                    StartRunRequest.newBuilder()
                        .setSpec(spec)
                        .putAllUserVars(vars)
                        .setRequestId(UUID.randomUUID().toString())
                        .build());
      } catch (StatusRuntimeException e) {
        throw RpcErrors.toCli(e, "orchestrator", address, HINT, "start the run of " + file);
      }
      String runId = started.getRunId();
      err.println("run " + runId + " started (trace " + started.getTraceId() + ")");
      Thread interrupted = reattachHint(runId);
      Runtime.getRuntime().addShutdownHook(interrupted);
      try {
        follow(stub, address, runId);
      } finally {
        try {
          Runtime.getRuntime().removeShutdownHook(interrupted);
        } catch (IllegalStateException shuttingDown) {
          // the hook is already running
        }
      }
      Run run;
      try {
        run =
            stub.withDeadlineAfter(UNARY_DEADLINE_SECONDS, TimeUnit.SECONDS)
                .getRun(GetRunRequest.newBuilder().setRunId(runId).build())
                .getRun();
      } catch (StatusRuntimeException e) {
        throw RpcErrors.toCli(e, "orchestrator", address, HINT, "read run " + runId);
      }
      out.println(SummaryJson.of(run));
      if (!run.getError().isEmpty()) {
        err.println("run " + runId + " " + Words.of(run.getStatus()) + ": " + run.getError());
      }
      return run.getStatus() == RunStatus.RUN_STATUS_SUCCEEDED ? 0 : CliException.FAILED;
    } finally {
      Settings.close(channel);
    }
  }

  /**
   * Prints the run's events until its run_finished event. A stream that breaks (the
   * orchestrator restarted, the network hiccuped) is resumed after the last sequence seen, for
   * up to 30 s without progress.
   */
  private void follow(OrchestratorServiceBlockingStub stub, Settings.Address address, String runId)
      throws CliException {
    long lastSequence = 0;
    long retryUntil = 0;
    long backoffMillis = 200;
    boolean finished = false;
    while (true) {
      String why;
      try {
        Iterator<WatchRunResponse> events =
            stub.watchRun(
                WatchRunRequest.newBuilder()
                    .setRunId(runId)
                    .setAfterSequence(lastSequence)
                    .build());
        while (events.hasNext()) {
          RunEvent event = events.next().getEvent();
          if (event.getSequence() <= lastSequence) {
            continue;
          }
          lastSequence = event.getSequence();
          retryUntil = 0;
          backoffMillis = 200;
          err.println(EventLines.of(event));
          finished |= event.hasRunFinished();
        }
        if (finished) {
          return;
        }
        why = "the stream ended before the run did";
      } catch (StatusRuntimeException e) {
        if (finished) {
          return;
        }
        if (e.getStatus().getCode() != Status.Code.UNAVAILABLE) {
          throw RpcErrors.toCli(e, "orchestrator", address, HINT, "follow run " + runId);
        }
        why = e.getStatus().getCode().toString();
      }
      long now = System.nanoTime();
      if (retryUntil == 0) {
        retryUntil = now + TimeUnit.SECONDS.toNanos(RECONNECT_SECONDS);
        err.println(
            "lost the event stream of run "
                + runId
                + " ("
                + why
                + "); reconnecting for up to "
                + RECONNECT_SECONDS
                + " s");
      } else if (now > retryUntil) {
        throw new CliException(
            CliException.UNREACHABLE,
            "lost the orchestrator at "
                + address.hostPort()
                + " while following run "
                + runId
                + " and could not reconnect in "
                + RECONNECT_SECONDS
                + " s ("
                + why
                + "). Once it is back, re-attach with `dagwire watch "
                + runId
                + "`.");
      }
      try {
        Thread.sleep(backoffMillis);
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new CliException(CliException.FAILED, "interrupted while following run " + runId);
      }
      backoffMillis = Math.min(backoffMillis * 2, 2000);
    }
  }

  /** On Ctrl-C, says that the run goes on and how to re-attach or cancel it. */
  private Thread reattachHint(String runId) {
    return new Thread(
        () ->
            err.println(
                "stopped following run "
                    + runId
                    + "; it goes on. Re-attach with `dagwire watch "
                    + runId
                    + "` or cancel it with `dagwire cancel "
                    + runId
                    + "`."),
        "dagwire-reattach-hint");
  }

  private static Map<String, String> parseVars(List<String> given) throws CliException {
    Map<String, String> vars = new LinkedHashMap<>();
    for (String item : given) {
      int equals = item.indexOf('=');
      if (equals < 0) {
        throw CliException.badInput(
            "--var '" + item + "': expected KEY=VALUE, for example --var topic=gRPC");
      }
      String key = item.substring(0, equals);
      if (!VAR_NAME.matcher(key).matches()) {
        throw CliException.badInput(
            "--var '"
                + item
                + "': '"
                + key
                + "' is not a variable name (letters, digits and _, not starting with a digit)");
      }
      vars.put(key, item.substring(equals + 1));
    }
    return vars;
  }

  /** The spec file's text, as-is (the server parses it); "-" reads stdin. */
  private static String readSpec(String file) throws CliException {
    byte[] raw;
    try {
      raw = file.equals("-") ? System.in.readAllBytes() : Files.readAllBytes(Path.of(file));
    } catch (NoSuchFileException | InvalidPathException e) {
      throw CliException.badInput("workflow spec " + file + " does not exist");
    } catch (AccessDeniedException e) {
      throw CliException.badInput("workflow spec " + file + " is not readable (permission denied)");
    } catch (IOException e) {
      throw CliException.badInput("cannot read workflow spec " + file + ": " + e.getMessage());
    }
    try {
      return StandardCharsets.UTF_8
          .newDecoder()
          .onMalformedInput(CodingErrorAction.REPORT)
          .onUnmappableCharacter(CodingErrorAction.REPORT)
          .decode(ByteBuffer.wrap(raw))
          .toString();
    } catch (CharacterCodingException e) {
      throw CliException.badInput("workflow spec " + file + " is not UTF-8 text");
    }
  }
}
