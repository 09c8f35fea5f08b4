/** The run summary in docs/contracts.md §9's `--output json` shape, and the status words it uses. */

import {
  type Artifact,
  type NodeSummary,
  type Run,
  RunStatus,
  runStatusToJSON,
  TaskStatus,
  taskStatusToJSON,
} from "./gen/dagwire/v1/common";

/** One artifact of a task, metadata only. */
export interface ArtifactJson {
  artifact_id: string;
  name: string;
  sha256: string;
  size: number;
}

/** The outcome of one task. */
export interface NodeJson {
  status: string;
  attempts: number;
  error: string | null;
  artifacts: ArtifactJson[];
}

/** What `run` prints on stdout once the run has finished. */
export interface SummaryJson {
  run_id: string;
  status: string;
  nodes: Record<string, NodeJson>;
}

/** "RUN_STATUS_SUCCEEDED" -> "succeeded"; an unknown value -> "unspecified". */
export function runStatusWord(status: RunStatus): string {
  return statusWord(runStatusToJSON(status), "RUN_STATUS_");
}

/** "TASK_STATUS_SKIPPED" -> "skipped"; an unknown value -> "unspecified". */
export function taskStatusWord(status: TaskStatus): string {
  return statusWord(taskStatusToJSON(status), "TASK_STATUS_");
}

function statusWord(name: string, prefix: string): string {
  return name.startsWith(prefix) ? name.slice(prefix.length).toLowerCase() : "unspecified";
}

/** The summary of a finished run, tasks in spec order. */
export function summaryOf(runId: string, status: RunStatus, nodes: readonly NodeSummary[]): SummaryJson {
  const out: Record<string, NodeJson> = {};
  for (const node of nodes) {
    out[node.nodeId] = {
      status: taskStatusWord(node.status),
      attempts: node.attempts,
      error: node.error === "" ? null : node.error,
      artifacts: node.artifacts.map(artifactJson),
    };
  }
  return { run_id: runId, status: runStatusWord(status), nodes: out };
}

/** The summary of a run as GetRun returned it. */
export function summaryOfRun(run: Run): SummaryJson {
  return summaryOf(run.runId, run.status, run.nodes);
}

function artifactJson(artifact: Artifact): ArtifactJson {
  return {
    artifact_id: artifact.artifactId,
    name: artifact.name,
    sha256: artifact.sha256,
    size: artifact.size,
  };
}

/** True for the run states a finished run can be in. */
export function isFinished(status: RunStatus): boolean {
  return (
    status === RunStatus.RUN_STATUS_SUCCEEDED ||
    status === RunStatus.RUN_STATUS_FAILED ||
    status === RunStatus.RUN_STATUS_CANCELLED
  );
}

export { RunStatus, TaskStatus };
