/**
 * The `reverse` agent: the Unicode code points of `params.text` if given, else of its inputs
 * joined (UTF-8, invalid bytes replaced by U+FFFD), in reverse order.
 *
 * `params.delay_ms` (optional, milliseconds) makes it wait before answering, for demos and
 * for tests that need a task in flight.
 */

import { status } from "@grpc/grpc-js";

/** Longest `delay_ms` accepted: one hour. */
export const MAX_DELAY_MS = 3_600_000;

/** A failure with the gRPC status the adapter answers; the code decides retries (docs/contracts.md §3). */
export class AgentError extends Error {
  constructor(
    readonly code: status,
    message: string,
  ) {
    super(message);
    this.name = "AgentError";
  }
}

/** The checked params of one `reverse` call. */
export interface ReverseParams {
  /** The text to reverse; undefined: reverse the inputs joined. */
  text: string | undefined;
  /** How long to wait before answering, in milliseconds. */
  delayMs: number;
}

/**
 * Check `params_json`: null or an object with an optional string `text` and an optional
 * `delay_ms` from 0 to MAX_DELAY_MS. Anything else is INVALID_ARGUMENT (never retried).
 */
export function parseParams(paramsJson: string): ReverseParams {
  let params: unknown;
  try {
    params = paramsJson === "" ? null : JSON.parse(paramsJson);
  } catch (err) {
    throw new AgentError(status.INVALID_ARGUMENT, `params_json is not JSON text: ${(err as Error).message}`);
  }
  if (params === null) {
    return { text: undefined, delayMs: 0 };
  }
  if (typeof params !== "object" || Array.isArray(params)) {
    throw new AgentError(
      status.INVALID_ARGUMENT,
      `reverse takes params as a mapping (text, delay_ms), got ${describe(params)}`,
    );
  }
  const { text, delay_ms: delay } = params as Record<string, unknown>;
  if (text !== undefined && text !== null && typeof text !== "string") {
    throw new AgentError(status.INVALID_ARGUMENT, `params.text must be a string, got ${describe(text)}`);
  }
  if (
    delay !== undefined &&
    delay !== null &&
    (typeof delay !== "number" || !Number.isFinite(delay) || delay < 0 || delay > MAX_DELAY_MS)
  ) {
    throw new AgentError(
      status.INVALID_ARGUMENT,
      `params.delay_ms must be a number of milliseconds from 0 to ${MAX_DELAY_MS}, got ${describe(delay)}`,
    );
  }
  return {
    text: typeof text === "string" ? text : undefined,
    delayMs: typeof delay === "number" ? delay : 0,
  };
}

/** The code points of `text` in reverse order (a surrogate pair stays one character). */
export function reverseText(text: string): string {
  return Array.from(text).reverse().join("");
}

/** The inputs' contents in order, each decoded as UTF-8 with invalid bytes replaced, joined. */
export function joinedText(inputs: readonly Uint8Array[]): string {
  const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
  return inputs.map((content) => decoder.decode(content)).join("");
}

function describe(value: unknown): string {
  const kind = Array.isArray(value) ? "array" : value === null ? "null" : typeof value;
  const shown = JSON.stringify(value) ?? String(value);
  return `${kind} ${shown.length > 40 ? `${shown.slice(0, 40)}...` : shown}`;
}
