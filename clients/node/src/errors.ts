/** Errors the client command reports as one line on stderr, each with its exit status. */

import { status as GrpcStatus, type ServiceError } from "@grpc/grpc-js";

import { explainConnectFailure } from "./security";

/** Exit statuses of the client command (the same for every dagwire client). */
export const ExitCode = {
  /** The run succeeded (or the command did its job). */
  OK: 0,
  /** The run failed or was cancelled. */
  RUN_FAILED: 1,
  /** Bad input: arguments, spec file, spec contents, unknown id. */
  BAD_INPUT: 2,
  /** A server could not be reached (or refused the TLS connection). */
  UNREACHABLE: 3,
  /** The server refused the call's credentials: UNAUTHENTICATED or PERMISSION_DENIED. */
  NOT_ALLOWED: 4,
  /** Interrupted (Ctrl-C) while following a run; the run goes on. */
  INTERRUPTED: 130,
} as const;

export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** A failure meant for the user: `message` is printed as is, then the process exits `code`. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly code: ExitCode,
  ) {
    super(message);
    this.name = "CliError";
  }
}

/** True when `err` is a gRPC status error (from a call, not from the client library itself). */
export function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === "number";
}

/**
 * Turn a failed call into a `CliError`: UNAVAILABLE (and a passed deadline) mean the server
 * could not be reached (exit 3); INVALID_ARGUMENT, NOT_FOUND and FAILED_PRECONDITION are the
 * user's input (exit 2); anything else is reported with its status name (exit 3 for transport
 * trouble, else 2).
 */
export function fromServiceError(err: unknown, what: string, address: string, tls = false): CliError {
  if (!isServiceError(err)) {
    const text = err instanceof Error ? err.message : String(err);
    return new CliError(`${what} at ${address} failed: ${text}`, ExitCode.UNREACHABLE);
  }
  const detail = readable(err.details || err.message);
  switch (err.code) {
    case GrpcStatus.UNAUTHENTICATED:
      return new CliError(`not authenticated: ${detail}`, ExitCode.NOT_ALLOWED);
    case GrpcStatus.PERMISSION_DENIED:
      return new CliError(`not allowed: ${detail}`, ExitCode.NOT_ALLOWED);
    case GrpcStatus.UNAVAILABLE:
    case GrpcStatus.DEADLINE_EXCEEDED: {
      const hint = explainConnectFailure(detail, tls);
      if (hint !== undefined) {
        return new CliError(
          `cannot reach the server at ${address} (${what}): ${hint} (${detail})`,
          ExitCode.UNREACHABLE,
        );
      }
      return new CliError(
        `cannot reach the server at ${address} (${what}): ${detail}; is it running? ` +
          "Set --server or DAGWIRE_ORCHESTRATOR_ADDR to its address",
        ExitCode.UNREACHABLE,
      );
    }
    case GrpcStatus.INVALID_ARGUMENT:
    case GrpcStatus.NOT_FOUND:
    case GrpcStatus.FAILED_PRECONDITION:
    case GrpcStatus.ALREADY_EXISTS:
    case GrpcStatus.OUT_OF_RANGE:
      return new CliError(`${what} refused: ${detail}`, ExitCode.BAD_INPUT);
    default:
      return new CliError(
        `${what} at ${address} failed (${GrpcStatus[err.code] ?? err.code}): ${detail}`,
        ExitCode.UNREACHABLE,
      );
  }
}

/**
 * grpc-js's "No connection established. Last error: Error: connect ECONNREFUSED ..." made short: the
 * innermost error, as round_robin nests one such message in another.
 */
function readable(details: string): string {
  const last = /^.*Last error: (?:Error: )?(.*?)(?:\. Resolution note:.*)?$/s.exec(details);
  return last?.[1] ?? details;
}
