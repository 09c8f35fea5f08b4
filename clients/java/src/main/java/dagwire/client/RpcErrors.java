package dagwire.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.ErrorInfo;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;

/** Turns a failed gRPC call into the one-line message and exit status a user sees. */
final class RpcErrors {
  private RpcErrors() {}

  /**
   * Maps a failed call to a {@link CliException}.
   *
   * @param error the call's failure
   * @param service which service was called, e.g. "orchestrator"
   * @param address where it was called, and which flag or variable chose that address
   * @param hint the flag and variable that set the address, e.g. "--server /
   *     DAGWIRE_ORCHESTRATOR_ADDR"
   * @param operation what the call was for, e.g. "start the run"
   */
  static CliException toCli(
      StatusRuntimeException error,
      String service,
      Settings.Address address,
      String hint,
      String operation) {
    Status status = error.getStatus();
    String description = status.getDescription() == null ? "" : status.getDescription();
    String reason = reason(error);
    String label = status.getCode() + (reason.isEmpty() ? "" : ", " + reason);
    switch (status.getCode()) {
      case UNAUTHENTICATED:
        return new CliException(CliException.NOT_ALLOWED, "not authenticated: " + description);
      case PERMISSION_DENIED:
        return new CliException(CliException.NOT_ALLOWED, "not allowed: " + description);
      case UNAVAILABLE:
      case DEADLINE_EXCEEDED:
        String tls = Security.explain(status, address.tls());
        if (tls != null) {
          return new CliException(
              CliException.UNREACHABLE,
              "cannot reach the "
                  + service
                  + " at "
                  + address.hostPort()
                  + " (from "
                  + address.source()
                  + ") to "
                  + operation
                  + ": "
                  + tls
                  + " ("
                  + label
                  + (Security.reason(status).isEmpty() ? "" : ": " + Security.reason(status))
                  + ")");
        }
        return new CliException(
            CliException.UNREACHABLE,
            "cannot reach the "
                + service
                + " at "
                + address.hostPort()
                + " (from "
                + address.source()
                + ") to "
                + operation
                + ": "
                + label
                + (Security.reason(status).isEmpty() ? "" : ": " + Security.reason(status))
                + ". Is it running? Start the services with `dagwire up`, or point "
                + hint
                + " at them.");
      case INVALID_ARGUMENT:
      case NOT_FOUND:
      case FAILED_PRECONDITION:
      case OUT_OF_RANGE:
      case ALREADY_EXISTS:
        return CliException.badInput(
            "the " + service + " refused to " + operation + " (" + label + "): " + description);
      default:
        return new CliException(
            CliException.FAILED,
            "the " + service + " failed to " + operation + " (" + label + "): " + description);
    }
  }

  /** The {@code ErrorInfo.reason} of a dagwire error, or "" when the server sent none. */
  private static String reason(StatusRuntimeException error) {
    com.google.rpc.Status details = StatusProto.fromThrowable(error);
    if (details == null) {
      return "";
    }
    for (Any detail : details.getDetailsList()) {
      if (detail.is(ErrorInfo.class)) {
        try {
          return detail.unpack(ErrorInfo.class).getReason();
        } catch (InvalidProtocolBufferException e) {
          return "";
        }
      }
    }
    return "";
  }
}
