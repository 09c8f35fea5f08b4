package dagwire.client;

/**
 * A failure the command reports as one line on stderr, with the exit status it ends with.
 *
 * <p>Exit statuses follow the dagwire command-line contract: 1 a run that failed or was
 * cancelled (or an unexpected server error), 2 bad input (a TLS or token file included) or an
 * unknown id, 3 a server that cannot be reached (or refuses the TLS connection), 4 a server that
 * refused the call's credentials (UNAUTHENTICATED or PERMISSION_DENIED).
 */
final class CliException extends Exception {
  private static final long serialVersionUID = 1L;

  /** Exit status for a run that failed, or an unexpected error from a server. */
  static final int FAILED = 1;

  /** Exit status for invalid input: a bad flag, file, variable or spec, or an unknown id. */
  static final int BAD_INPUT = 2;

  /** Exit status for a server that cannot be reached. */
  static final int UNREACHABLE = 3;

  /** Exit status for a call the server refused: UNAUTHENTICATED or PERMISSION_DENIED. */
  static final int NOT_ALLOWED = 4;

  private final int exitCode;

  CliException(int exitCode, String message) {
    super(message);
    this.exitCode = exitCode;
  }

  static CliException badInput(String message) {
    return new CliException(BAD_INPUT, message);
  }

  int exitCode() {
    return exitCode;
  }
}
