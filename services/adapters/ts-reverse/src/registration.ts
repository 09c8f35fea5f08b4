/**
 * Keeping the adapter registered with the dispatcher: register (retrying while the dispatcher
 * is down), heartbeat at a third of the lease, register again when the dispatcher answers that
 * it forgot the instance (NOT_FOUND), and deregister on shutdown.
 */

import { setTimeout as sleep } from "node:timers/promises";

import {
  type ChannelCredentials,
  type ChannelOptions,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";
import { explainConnectFailure } from "@dagwire/node-client/security";

import { DispatcherServiceClient } from "./gen/dagwire/v1/dispatcher_service";
import type { Duration } from "./gen/google/protobuf/duration";
import { log } from "./log";

const CALL_DEADLINE_MS = 5_000;
const MIN_BACKOFF_MS = 200;
const MAX_BACKOFF_MS = 5_000;

/** Who registers. */
export interface Instance {
  instanceId: string;
  address: string;
  agents: string[];
  capacity: number;
}

export class Registration {
  private readonly client: DispatcherServiceClient;
  private readonly stopping = new AbortController();
  private loop: Promise<void> | null = null;
  /** True while the dispatcher holds a lease for this instance. */
  registered = false;

  constructor(
    readonly dispatcherAddr: string,
    private readonly instance: Instance,
    /** Heartbeat basis until the dispatcher states its lease (`DAGWIRE_LEASE_SECONDS`). */
    private readonly leaseSeconds: number,
    options: ChannelOptions,
    credentials: ChannelCredentials,
    /** Whether the channel uses TLS (for the hint of a failed connection). */
    private readonly tls = false,
  ) {
    this.client = new DispatcherServiceClient(dispatcherAddr, credentials, options);
  }

  /** Start registering and heartbeating in the background; never throws. */
  start(): void {
    this.loop ??= this.run();
  }

  /** Stop heartbeating and deregister, giving up after `timeLimitMs`. */
  async stop(timeLimitMs = 2_000): Promise<void> {
    this.stopping.abort();
    await this.loop;
    try {
      await this.call("deregisterAdapter", { instanceId: this.instance.instanceId }, timeLimitMs);
      log.info(`deregistered from the dispatcher at ${this.dispatcherAddr}`);
    } catch (err) {
      log.warning(`could not deregister from the dispatcher at ${this.dispatcherAddr}: ${detail(err)}`);
    } finally {
      this.registered = false;
      this.client.close();
    }
  }

  private async run(): Promise<void> {
    let backoff = MIN_BACKOFF_MS;
    let failing = false;
    while (!this.stopping.signal.aborted) {
      let delayMs: number;
      try {
        const lease = this.registered
          ? await this.call("heartbeat", { instanceId: this.instance.instanceId })
          : await this.call("registerAdapter", this.instance);
        if (!this.registered) {
          this.registered = true;
          log.info(
            `registered with the dispatcher at ${this.dispatcherAddr} as ${this.instance.address} ` +
              `(${this.instance.agents.join(", ")}), lease ${seconds(lease.leaseDuration) ?? this.leaseSeconds} s`,
          );
        }
        failing = false;
        backoff = MIN_BACKOFF_MS;
        delayMs = Math.max(((seconds(lease.leaseDuration) ?? this.leaseSeconds) * 1000) / 3, 50);
      } catch (err) {
        if (this.stopping.signal.aborted) {
          break;
        }
        if ((err as ServiceError).code === status.NOT_FOUND && this.registered) {
          log.warning("the dispatcher dropped this instance (lease expired): registering again");
          this.registered = false;
          continue;
        }
        if (!failing) {
          const why = detail(err);
          const hint = explainConnectFailure(why, this.tls);
          log.warning(
            `cannot reach the dispatcher at ${this.dispatcherAddr}: ${hint === undefined ? why : `${hint} (${why})`} (retrying)`,
          );
        }
        failing = true;
        this.registered = false;
        delayMs = backoff * (0.5 + Math.random() / 2);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
      await sleep(delayMs, undefined, { signal: this.stopping.signal }).catch(() => undefined);
    }
  }

  /** One unary call with a deadline, as a promise. */
  private call<M extends "registerAdapter" | "heartbeat" | "deregisterAdapter">(
    method: M,
    request: Parameters<DispatcherServiceClient[M]>[0],
    deadlineMs = CALL_DEADLINE_MS,
  ): Promise<{ leaseDuration?: Duration | undefined }> {
    return new Promise((resolve, reject) => {
      const fn = this.client[method].bind(this.client) as (
        req: typeof request,
        md: Metadata,
        opts: { deadline: Date },
        cb: (err: ServiceError | null, reply: { leaseDuration?: Duration | undefined }) => void,
      ) => void;
      fn(request, new Metadata(), { deadline: new Date(Date.now() + deadlineMs) }, (err, reply) =>
        err ? reject(err) : resolve(reply),
      );
    });
  }
}

function seconds(duration: Duration | undefined): number | undefined {
  if (duration === undefined) {
    return undefined;
  }
  const value = duration.seconds + duration.nanos / 1e9;
  return value > 0 ? value : undefined;
}

/**
 * The error's text; grpc-js's "No connection established. Last error: ..." made short (the
 * innermost error: round_robin nests one such message in another).
 */
function detail(err: unknown): string {
  const e = err as Partial<ServiceError>;
  const text = e.details ?? e.message ?? String(err);
  return /^.*Last error: (?:Error: )?(.*?)(?:\. Resolution note:.*)?$/s.exec(text)?.[1] ?? text;
}
