/**
 * `run FILE`: start a run with StartRun, follow it with WatchRun (one stderr line per event, as
 * it arrives), then print its summary from GetRun as JSON on stdout.
 */

import { randomUUID } from "node:crypto";
import { readFile } from "node:fs/promises";
import { setTimeout as sleep } from "node:timers/promises";

import { Metadata, status as GrpcStatus } from "@grpc/grpc-js";

import { dial } from "./config";
import { CliError, ExitCode, fromServiceError, isServiceError } from "./errors";
import { describeEvent } from "./events";
import type { RunEvent } from "./gen/dagwire/v1/common";
import {
  type GetRunResponse,
  OrchestratorServiceClient,
  type StartRunResponse,
} from "./gen/dagwire/v1/orchestrator_service";
import { RunStatus, summaryOf, summaryOfRun, type SummaryJson } from "./summary";

/** How long a unary call may take before the server counts as unreachable. */
const UNARY_DEADLINE_MS = 30_000;
/** How long WatchRun is re-attached (after a dropped stream) before giving up. */
const RECONNECT_BUDGET_MS = 30_000;

/** What `run` was asked to do. */
export interface RunOptions {
  specPath: string;
  userVars: Record<string, string>;
  server: string;
  /** `--token-file`: where the bearer token is (default: DAGWIRE_TOKEN, DAGWIRE_TOKEN_FILE). */
  tokenFile?: string | undefined;
}

/** Run the workflow in `options.specPath` to its end; returns the exit status. */
export async function runCommand(options: RunOptions): Promise<ExitCode> {
  const spec = await readSpec(options.specPath);
  const channel = dial(options.server, options.tokenFile);
  const client = new OrchestratorServiceClient(options.server, channel.credentials, channel.options);
  const tls = channel.tls;
  const stopFollowing = new AbortController();
  const onSignal = (): void => stopFollowing.abort();
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  try {
    const started = await startRun(client, options, spec, tls);
    progress(`started run ${started.runId} (trace ${started.traceId}) on ${options.server}`);
    const finished = await follow(client, started.runId, options.server, stopFollowing.signal, tls);
    const summary = await finalSummary(client, started.runId, finished, options.server);
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    return summary.status === "succeeded" ? ExitCode.OK : ExitCode.RUN_FAILED;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    client.close();
  }
}

async function readSpec(path: string): Promise<string> {
  try {
    return await readFile(path, "utf8");
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new CliError(`cannot read the workflow spec ${path}: ${reason}`, ExitCode.BAD_INPUT);
  }
}

function startRun(
  client: OrchestratorServiceClient,
  options: RunOptions,
  spec: string,
  tls: boolean,
): Promise<StartRunResponse> {
  const request = {
    spec,
    userVars: options.userVars,
    requestId: randomUUID(),
    namespace: process.env.DAGWIRE_NAMESPACE ?? "",
  };
  return new Promise((resolve, reject) => {
    client.startRun(request, new Metadata(), { deadline: deadline() }, (err, reply) => {
      if (err) {
        reject(
          err.code === GrpcStatus.INVALID_ARGUMENT
            ? new CliError(`invalid workflow spec ${options.specPath}: ${err.details}`, ExitCode.BAD_INPUT)
            : fromServiceError(err, "StartRun", options.server, tls),
        );
      } else {
        resolve(reply);
      }
    });
  });
}

/**
 * Stream the run's events until run_finished, re-attaching after the last sequence seen when
 * the stream drops (for up to RECONNECT_BUDGET_MS), so no event is lost or shown twice.
 */
async function follow(
  client: OrchestratorServiceClient,
  runId: string,
  server: string,
  stop: AbortSignal,
  tls: boolean,
): Promise<RunEvent> {
  let after = 0;
  let failingSince: number | null = null;
  for (;;) {
    const stream = client.watchRun({ runId, afterSequence: after });
    const cancel = (): void => stream.cancel();
    stop.addEventListener("abort", cancel, { once: true });
    try {
      for await (const reply of stream as AsyncIterable<{ event?: RunEvent }>) {
        const event = reply.event;
        if (event === undefined || event.sequence <= after) {
          continue;
        }
        after = event.sequence;
        failingSince = null;
        const line = describeEvent(event);
        if (line !== null) {
          progress(line);
        }
        if (event.event?.$case === "runFinished") {
          stream.cancel();
          return event;
        }
      }
      // The stream ended without run_finished (a server going away): attach again, within budget.
      failingSince ??= Date.now();
      if (Date.now() - failingSince > RECONNECT_BUDGET_MS) {
        throw new CliError(
          `the orchestrator at ${server} keeps closing the event stream of run ${runId} before it ` +
            `finished; follow it later with \`dagwire watch ${runId}\``,
          ExitCode.UNREACHABLE,
        );
      }
    } catch (err) {
      if (stop.aborted) {
        throw new CliError(
          `stopped following run ${runId}; it goes on. Re-attach with \`dagwire watch ${runId}\` ` +
            `or cancel it with \`dagwire cancel ${runId}\``,
          ExitCode.INTERRUPTED,
        );
      }
      if (!isServiceError(err) || err.code !== GrpcStatus.UNAVAILABLE) {
        throw fromServiceError(err, "WatchRun", server, tls);
      }
      failingSince ??= Date.now();
      if (Date.now() - failingSince > RECONNECT_BUDGET_MS) {
        throw fromServiceError(err, "WatchRun", server, tls);
      }
      progress(`lost the event stream (${err.details}); re-attaching after event ${after}`);
    } finally {
      stop.removeEventListener("abort", cancel);
    }
    await sleep(500);
  }
}

/** The summary from GetRun; the run_finished event's own copy if GetRun cannot be had. */
async function finalSummary(
  client: OrchestratorServiceClient,
  runId: string,
  finished: RunEvent,
  server: string,
): Promise<SummaryJson> {
  try {
    const reply = await new Promise<GetRunResponse>((resolve, reject) => {
      client.getRun({ runId }, new Metadata(), { deadline: deadline() }, (err, r) =>
        err ? reject(err) : resolve(r),
      );
    });
    if (reply.run !== undefined) {
      return summaryOfRun(reply.run);
    }
  } catch (err) {
    progress(
      `GetRun on ${server} failed (${fromServiceError(err, "GetRun", server).message}); using the run_finished event`,
    );
  }
  if (finished.event?.$case !== "runFinished") {
    throw new CliError(`run ${runId}: no summary could be read`, ExitCode.UNREACHABLE);
  }
  const { status, nodes } = finished.event.value;
  return summaryOf(runId, status ?? RunStatus.RUN_STATUS_UNSPECIFIED, nodes);
}

function deadline(): Date {
  return new Date(Date.now() + UNARY_DEADLINE_MS);
}

function progress(line: string): void {
  process.stderr.write(`${line}\n`);
}
