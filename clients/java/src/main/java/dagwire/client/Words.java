package dagwire.client;

import com.google.protobuf.Duration;
import dagwire.v1.Common.RunStatus;
import dagwire.v1.Common.TaskStatus;
import java.util.Locale;

/** The lowercase status words and durations users see (docs/contracts.md §4). */
final class Words {
  private Words() {}

  /** "succeeded", "failed", "cancelled", "running"... ("unknown" for a newer server's value). */
  static String of(RunStatus status) {
    if (status == RunStatus.UNRECOGNIZED) {
      return "unknown";
    }
    return strip(status.name(), "RUN_STATUS_");
  }

  /** "succeeded", "failed", "skipped", "cancelled"... ("unknown" for a newer server's value). */
  static String of(TaskStatus status) {
    if (status == TaskStatus.UNRECOGNIZED) {
      return "unknown";
    }
    return strip(status.name(), "TASK_STATUS_");
  }

  /** Seconds with millisecond precision, e.g. "0.250 s". */
  static String seconds(Duration duration) {
    double seconds = duration.getSeconds() + duration.getNanos() / 1e9;
    return String.format(Locale.ROOT, "%.3f s", seconds);
  }

  private static String strip(String name, String prefix) {
    String word = name.startsWith(prefix) ? name.substring(prefix.length()) : name;
    return word.toLowerCase(Locale.ROOT);
  }
}
