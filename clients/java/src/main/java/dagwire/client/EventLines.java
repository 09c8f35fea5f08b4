package dagwire.client;

import dagwire.v1.Common.Artifact;
import dagwire.v1.Common.RunEvent;
import dagwire.v1.Common.TaskStatus;
import java.util.ArrayList;
import java.util.List;

/** One human-readable line per run event, as {@code run} prints them to stderr. */
final class EventLines {
  private EventLines() {}

  static String of(RunEvent event) {
    String prefix = "[" + event.getSequence() + "] ";
    switch (event.getEventCase()) {
      case TASK_STARTED:
        {
          RunEvent.TaskStarted started = event.getTaskStarted();
          return prefix
              + started.getNodeId()
              + ": attempt "
              + started.getAttempt()
              + " started on agent "
              + started.getAgent();
        }
      case ATTEMPT_FAILED:
        {
          RunEvent.AttemptFailed failed = event.getAttemptFailed();
          String next =
              failed.getWillRetry()
                  ? "retrying in " + Words.seconds(failed.getRetryDelay())
                  : "no attempt left";
          return prefix
              + failed.getNodeId()
              + ": attempt "
              + failed.getAttempt()
              + " failed: "
              + failed.getError()
              + " ("
              + next
              + ")";
        }
      case TASK_FINISHED:
        return prefix + taskFinished(event.getTaskFinished());
      case RUN_FINISHED:
        {
          RunEvent.RunFinished finished = event.getRunFinished();
          String error = finished.getError().isEmpty() ? "" : ": " + finished.getError();
          return prefix + "run " + event.getRunId() + " " + Words.of(finished.getStatus()) + error;
        }
      default:
        return prefix + "(an event this client does not know; a newer server?)";
    }
  }

  private static String taskFinished(RunEvent.TaskFinished finished) {
    StringBuilder line = new StringBuilder(finished.getNodeId());
    line.append(": ").append(Words.of(finished.getStatus()));
    if (finished.getAttempts() > 0) {
      line.append(" after ").append(finished.getAttempts());
      line.append(finished.getAttempts() == 1 ? " attempt" : " attempts");
    }
    if (!finished.getError().isEmpty()) {
      line.append(": ").append(finished.getError());
    }
    if (finished.getStatus() == TaskStatus.TASK_STATUS_SUCCEEDED) {
      List<String> outputs = new ArrayList<>();
      for (Artifact artifact : finished.getArtifactsList()) {
        String sha = artifact.getSha256();
        outputs.add(
            artifact.getName()
                + " ("
                + artifact.getSize()
                + " bytes, sha256 "
                + (sha.length() > 12 ? sha.substring(0, 12) : sha)
                + ")");
      }
      if (!outputs.isEmpty()) {
        line.append(" -> ").append(String.join(", ", outputs));
      }
    }
    return line.toString();
  }
}
