/**
 * `dagwire.v1.AgentAdapterService` for the `reverse` agent: decode the request, run the agent,
 * encode its output, and answer errors with the status codes that decide retries (docs/contracts.md §3):
 * INVALID_ARGUMENT / FAILED_PRECONDITION are never retried, anything else is.
 */

import { setTimeout as sleep } from "node:timers/promises";

import {
  type handleUnaryCall,
  Metadata,
  type ServerErrorResponse,
  type ServerUnaryCall,
  status,
} from "@grpc/grpc-js";

import {
  type AgentAdapterServiceServer,
  type DescribeResponse,
  type ExecuteRequest,
  type ExecuteResponse,
} from "./gen/dagwire/v1/adapter_service";
import type { Artifact } from "./gen/dagwire/v1/common";
import { log } from "./log";
import { AgentError, joinedText, parseParams, reverseText } from "./reverse";
import type { Stores } from "./store";

/** The agent key this adapter serves. */
export const AGENT = "reverse";
/** Outputs with more bytes than this go to the store and return by reference. */
export const INLINE_LIMIT = 1024 * 1024;
/** Metadata key carrying the run's trace id on every call. */
export const TRACE_ID_KEY = "x-dagwire-trace-id";
export const VERSION = "0.1.0";

/** The servicer; `inFlight` counts Execute calls now running. */
export class ReverseServicer {
  inFlight = 0;

  constructor(
    private readonly stores: Stores,
    readonly capacity: number,
  ) {}

  /** The handlers to add to a grpc-js Server. */
  handlers(): AgentAdapterServiceServer {
    const execute: handleUnaryCall<ExecuteRequest, ExecuteResponse> = (call, callback) => {
      this.execute(call).then(
        (reply) => callback(null, reply),
        (err: unknown) => callback(toStatus(err)),
      );
    };
    const describe: handleUnaryCall<unknown, DescribeResponse> = (_call, callback) => {
      callback(null, { agents: [AGENT], capacity: this.capacity, version: VERSION, language: "typescript" });
    };
    return { execute, describe };
  }

  private async execute(call: ServerUnaryCall<ExecuteRequest, ExecuteResponse>): Promise<ExecuteResponse> {
    const request = call.request;
    const traceId = String(call.metadata.get(TRACE_ID_KEY)[0] ?? request.traceId ?? "");
    const fields = {
      trace_id: traceId,
      run_id: request.runId,
      node_id: request.nodeId,
      attempt: request.attempt,
    };
    const started = Date.now();
    const cancelled = new AbortController();
    call.on("cancelled", () => cancelled.abort());
    this.inFlight++;
    try {
      if (request.agent !== AGENT) {
        throw new AgentError(
          status.FAILED_PRECONDITION,
          `this adapter serves agent key '${AGENT}', not '${request.agent}'`,
        );
      }
      if (this.inFlight > this.capacity) {
        throw new AgentError(
          status.RESOURCE_EXHAUSTED,
          `the adapter is at its capacity of ${this.capacity} calls`,
        );
      }
      const params = parseParams(request.paramsJson);
      // Forward the trace id to the store, so its logs line up with ours.
      const outgoing = new Metadata();
      outgoing.set(TRACE_ID_KEY, traceId);
      // The store calls of this attempt send its grant instead of the adapter's own token
      // (docs/security.md, "Store grants"); the channel's bearer interceptor keeps it.
      if (request.storeToken !== "") {
        outgoing.set("authorization", `Bearer ${request.storeToken}`);
      }
      const text =
        params.text ??
        joinedText(await Promise.all(request.inputArtifacts.map((a) => this.stores.content(a, outgoing))));
      if (params.delayMs > 0) {
        await sleep(params.delayMs, undefined, { signal: cancelled.signal }).catch(() => {
          throw new AgentError(status.CANCELLED, "the call was cancelled while waiting for delay_ms");
        });
      }
      const out = await this.output(Buffer.from(reverseText(text), "utf8"), request, outgoing);
      log.info(
        `executed ${AGENT}: ${text.length} UTF-16 units reversed in ${Date.now() - started} ms`,
        fields,
      );
      return { outputArtifacts: [out] };
    } catch (err) {
      const e = toStatus(err);
      log.warning(`${request.agent} failed (${status[e.code ?? status.UNKNOWN]}): ${e.details}`, fields);
      throw err;
    } finally {
      this.inFlight--;
    }
  }

  private async output(content: Buffer, request: ExecuteRequest, metadata: Metadata): Promise<Artifact> {
    const header = { name: "out", mediaType: "text/plain", runId: request.runId, nodeId: request.nodeId };
    if (content.length > INLINE_LIMIT) {
      return this.stores.put(header, content, metadata);
    }
    return {
      artifactId: "",
      metadata: {},
      sha256: "",
      size: 0,
      createdAt: undefined,
      ...header,
      body: { $case: "content", value: content },
    };
  }
}

/** An error as the status the call answers: AgentError keeps its code, anything else UNKNOWN. */
function toStatus(err: unknown): Partial<ServerErrorResponse> & { code: status; details: string } {
  if (err instanceof AgentError) {
    return { code: err.code, details: err.message };
  }
  const text = err instanceof Error ? err.message : String(err);
  return { code: status.UNKNOWN, details: `reverse failed: ${text}` };
}
