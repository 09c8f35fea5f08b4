/** One readable progress line per run event (written to stderr as events arrive). */

import type { RunEvent } from "./gen/dagwire/v1/common";
import { runStatusWord, taskStatusWord } from "./summary";

/** The progress line of one event, or null for an event this client does not know. */
export function describeEvent(event: RunEvent): string | null {
  const seq = `[${event.sequence}]`;
  const body = event.event;
  switch (body?.$case) {
    case "taskStarted": {
      const { nodeId, attempt, agent } = body.value;
      return `${seq} task ${nodeId} started (attempt ${attempt}, agent ${agent})`;
    }
    case "attemptFailed": {
      const { nodeId, attempt, error, willRetry, retryDelay } = body.value;
      const delay = retryDelay ? retryDelay.seconds + retryDelay.nanos / 1e9 : 0;
      const next = willRetry ? `; retrying in ${delay.toFixed(2)} s` : "; no retry left";
      return `${seq} task ${nodeId} attempt ${attempt} failed: ${error}${next}`;
    }
    case "taskFinished": {
      const { nodeId, status, attempts, error, artifacts } = body.value;
      const outputs = artifacts.map((a) => `${a.name} ${a.size} B sha256 ${a.sha256.slice(0, 12)}`);
      const detail = error !== "" ? `: ${error}` : outputs.length > 0 ? ` -> ${outputs.join(", ")}` : "";
      const tries = attempts === 0 ? "" : attempts === 1 ? " after 1 attempt" : ` after ${attempts} attempts`;
      return `${seq} task ${nodeId} ${taskStatusWord(status)}${tries}${detail}`;
    }
    case "runFinished": {
      const { status, error, name } = body.value;
      const detail = error !== "" ? `: ${error}` : "";
      return `${seq} run ${event.runId} (${name}) ${runStatusWord(status)}${detail}`;
    }
    case undefined:
      return null;
  }
}
