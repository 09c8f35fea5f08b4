/** Where the services are and how channels to them are set up (`DAGWIRE_*` defaults). */

import type { ChannelCredentials, ChannelOptions, Interceptor } from "@grpc/grpc-js";

import { CliError, ExitCode } from "./errors";
import { connection, TlsSettingsError } from "./security";
import { serviceConfig, targetProblem } from "./targets";

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

/** How the client dials `target`: plaintext or TLS, with the token if there is one. */
export interface Dial {
  credentials: ChannelCredentials;
  options: ChannelOptions & { interceptors?: Interceptor[] };
  /** Whether the channel uses TLS (for the hints of failed connections). */
  tls: boolean;
}

/**
 * The credentials and options of a channel to `target`: TLS from `DAGWIRE_TLS_*`, the bearer
 * token from `tokenFile` (the `--token-file` flag), else `DAGWIRE_TOKEN`, else
 * `DAGWIRE_TOKEN_FILE` (docs/security.md). A TLS or token file that cannot be used is bad
 * input (exit 2), its line naming the setting and the path.
 */
export function dial(target: string, tokenFile: string | undefined): Dial {
  try {
    const { credentials, options, tls } = connection(target, process.env, tokenFile);
    return { credentials, options: { ...channelOptions(), ...options }, tls };
  } catch (err) {
    if (err instanceof TlsSettingsError) {
      throw new CliError(err.message, ExitCode.BAD_INPUT);
    }
    throw err;
  }
}

const SAFE_METHODS: Record<string, string[]> = {
  "dagwire.v1.OrchestratorService": ["StartRun", "GetRun", "ListRuns", "WatchRun", "CancelRun"],
  "dagwire.v1.ArtifactStoreService": ["GetArtifact", "StatArtifact", "ListArtifacts"],
};

const SERVICE_CONFIG = serviceConfig(SAFE_METHODS);

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

/** A gRPC target a dagwire client dials (`targetProblem` says which forms), checked. */
function checkAddress(address: string, source: string): string {
  const problem = targetProblem(address);
  if (problem !== undefined) {
    throw new CliError(`${source}=${JSON.stringify(address)} ${problem}`, ExitCode.BAD_INPUT);
  }
  return address;
}
