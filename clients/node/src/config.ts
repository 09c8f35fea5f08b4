/** Where the services are and how channels to them are set up (`DAGWIRE_*` defaults). */

import type { ChannelOptions } from "@grpc/grpc-js";

import { CliError, ExitCode } from "./errors";

export const DEFAULT_ORCHESTRATOR_ADDR = "127.0.0.1:50051";
export const DEFAULT_STORE_ADDR = "127.0.0.1:50053";
export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

/** The orchestrator address: the flag, else `DAGWIRE_ORCHESTRATOR_ADDR`, else the default. */
export function orchestratorAddress(flag: string | undefined): string {
  return checkAddress(
    flag ?? env("DAGWIRE_ORCHESTRATOR_ADDR") ?? DEFAULT_ORCHESTRATOR_ADDR,
    flag === undefined ? "DAGWIRE_ORCHESTRATOR_ADDR" : "--server",
  );
}

/** The store address: the flag, else `DAGWIRE_STORE_ADDR`, else the default. */
export function storeAddress(flag: string | undefined): string {
  return checkAddress(
    flag ?? env("DAGWIRE_STORE_ADDR") ?? DEFAULT_STORE_ADDR,
    flag === undefined ? "DAGWIRE_STORE_ADDR" : "--store",
  );
}

/** Channel options every dagwire client uses: message limits and keepalive on long streams. */
export function channelOptions(): ChannelOptions {
  const limit = maxMessageBytes();
  return {
    "grpc.max_send_message_length": limit,
    "grpc.max_receive_message_length": limit,
    // WatchRun can stay quiet for long: ping so that dead connections are noticed.
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
    // Round-robin over every address of the target, and retry on UNAVAILABLE (a replica
    // died) only the calls safe to repeat (docs/targets.md); ours, not one from DNS.
    "grpc.service_config": SERVICE_CONFIG,
    "grpc.service_config_disable_resolution": 1,
  };
}

const SAFE_METHODS: Record<string, string[]> = {
  "dagwire.v1.OrchestratorService": ["StartRun", "GetRun", "ListRuns", "WatchRun", "CancelRun"],
  "dagwire.v1.ArtifactStoreService": ["GetArtifact", "StatArtifact", "ListArtifacts"],
};

const SERVICE_CONFIG = JSON.stringify({
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [
    {
      name: Object.entries(SAFE_METHODS).flatMap(([service, methods]) =>
        methods.map((method) => ({ service, method })),
      ),
      retryPolicy: {
        maxAttempts: 4,
        initialBackoff: "0.1s",
        maxBackoff: "0.5s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
});

function maxMessageBytes(): number {
  const raw = env("DAGWIRE_MAX_MESSAGE_BYTES");
  if (raw === undefined) {
    return DEFAULT_MAX_MESSAGE_BYTES;
  }
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 1024) {
    throw new CliError(
      `DAGWIRE_MAX_MESSAGE_BYTES=${JSON.stringify(raw)} is not a whole number of bytes of ` +
        "at least 1024; unset it for the default of 16 MiB",
      ExitCode.BAD_INPUT,
    );
  }
  return value;
}

function env(name: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value.trim() === "" ? undefined : value.trim();
}

/**
 * A gRPC target a dagwire client dials (docs/targets.md): `host:port`, `dns:///name:port`
 * (every address of the name, balanced round-robin: a Kubernetes headless service) or
 * `ipv4:A:PORT,B:PORT` (a fixed list of replicas; grpc-js resolves it itself).
 */
function checkAddress(address: string, source: string): string {
  const bad = (why: string): CliError =>
    new CliError(`${source}=${JSON.stringify(address)} ${why}`, ExitCode.BAD_INPUT);
  if (address.startsWith("dns:")) {
    let rest = address.slice("dns:".length);
    if (rest.startsWith("//")) {
      const slash = rest.indexOf("/", 2);
      rest = slash < 0 ? "" : rest.slice(slash + 1);
    }
    if (!isHostPort(rest)) {
      throw bad(
        "is not dns:///name:port (the port is required; for example dns:///dagwire-orchestrator:50051)",
      );
    }
    return address;
  }
  if (address.startsWith("ipv4:")) {
    for (const item of address.slice("ipv4:".length).split(",")) {
      const match = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3}):(\d{1,5})$/.exec(item.trim());
      const ok = match !== null && match.slice(1, 5).every((o) => Number(o) <= 255) && validPort(match[5]);
      if (!ok) {
        throw bad(
          `has ${JSON.stringify(item)}, which is not an IPv4 address with a port (for example ipv4:10.0.0.5:50051,10.0.0.6:50051)`,
        );
      }
    }
    return address;
  }
  if (address.includes("://") || !isHostPort(address)) {
    throw bad(
      "is not a host:port address (for example 127.0.0.1:50051), dns:///name:port or ipv4:A:PORT,B:PORT",
    );
  }
  return address;
}

function isHostPort(address: string): boolean {
  const colon = address.lastIndexOf(":");
  if (colon <= 0) {
    return false;
  }
  const host = address.slice(0, colon);
  const bracketed = host.startsWith("[") && host.endsWith("]");
  return (bracketed || !host.includes(":")) && validPort(address.slice(colon + 1));
}

function validPort(text: string | undefined): boolean {
  return text !== undefined && /^\d{1,5}$/.test(text) && Number(text) >= 1 && Number(text) <= 65535;
}
