/** The adapter's settings, read once from `DAGWIRE_*` environment variables. */

import { networkInterfaces } from "node:os";

import { targetProblem } from "@dagwire/node-client/targets";

/** Where the adapter listens, what it registers, and whom it talks to. */
export interface Settings {
  /** Address to listen on (`DAGWIRE_LISTEN_ADDR`); port 0 picks a free one. */
  listenAddr: string;
  /** Address to register (`DAGWIRE_ADVERTISE_ADDR`); empty: the bound listen address. */
  advertiseAddr: string;
  /**
   * The dispatcher (`DAGWIRE_DISPATCHER_ADDR`): a gRPC target, `host:port`, `dns:///name:port`
   * or `ipv4:A:PORT,B:PORT` (docs/targets.md).
   */
  dispatcherAddr: string;
  /**
   * The store for inputs held by reference without an address, and for large outputs
   * (`DAGWIRE_STORE_ADDR`): a gRPC target like `dispatcherAddr`.
   */
  storeAddr: string;
  /** Registration lease in seconds (`DAGWIRE_LEASE_SECONDS`); heartbeats every third of it. */
  leaseSeconds: number;
  /** Send and receive limit per gRPC message (`DAGWIRE_MAX_MESSAGE_BYTES`). */
  maxMessageBytes: number;
  /** Seconds in-flight calls get to finish after SIGTERM (`DAGWIRE_GRACE_SECONDS`). */
  graceSeconds: number;
  /** How many Execute calls the adapter takes at once (`DAGWIRE_CAPACITY`). */
  capacity: number;
}

/** A setting that is set but wrong; main() prints it as one line and exits 2. */
export class SettingsError extends Error {
  override name = "SettingsError";
}

/** Read the settings from `env`, checking each value. */
export function loadSettings(env: NodeJS.ProcessEnv = process.env): Settings {
  const get = (name: string): string | undefined => {
    const value = env[name]?.trim();
    return value === undefined || value === "" ? undefined : value;
  };
  const advertise = get("DAGWIRE_ADVERTISE_ADDR");
  return {
    listenAddr: address("DAGWIRE_LISTEN_ADDR", get("DAGWIRE_LISTEN_ADDR") ?? "127.0.0.1:50060", true),
    advertiseAddr: advertise === undefined ? "" : dialable("DAGWIRE_ADVERTISE_ADDR", advertise),
    dispatcherAddr: target("DAGWIRE_DISPATCHER_ADDR", get("DAGWIRE_DISPATCHER_ADDR") ?? "127.0.0.1:50052"),
    storeAddr: target("DAGWIRE_STORE_ADDR", get("DAGWIRE_STORE_ADDR") ?? "127.0.0.1:50053"),
    leaseSeconds: number("DAGWIRE_LEASE_SECONDS", get("DAGWIRE_LEASE_SECONDS"), 10, 0.1),
    maxMessageBytes: number(
      "DAGWIRE_MAX_MESSAGE_BYTES",
      get("DAGWIRE_MAX_MESSAGE_BYTES"),
      16 * 1024 * 1024,
      1024,
      true,
    ),
    graceSeconds: number("DAGWIRE_GRACE_SECONDS", get("DAGWIRE_GRACE_SECONDS"), 10, 0),
    capacity: number("DAGWIRE_CAPACITY", get("DAGWIRE_CAPACITY"), 64, 1, true),
  };
}

/**
 * The address to register: `advertiseAddr` when set, else the listen host with the bound
 * port; a wildcard listen host becomes this host's first non-loopback IPv4 address.
 */
export function advertisedAddress(settings: Settings, port: number): string {
  if (settings.advertiseAddr !== "") {
    return settings.advertiseAddr;
  }
  const host = settings.listenAddr.slice(0, settings.listenAddr.lastIndexOf(":"));
  if (["", "0.0.0.0", "::", "[::]"].includes(host)) {
    return `${thisHost()}:${port}`;
  }
  return `${host}:${port}`;
}

function thisHost(): string {
  for (const addresses of Object.values(networkInterfaces())) {
    for (const a of addresses ?? []) {
      if (a.family === "IPv4" && !a.internal) {
        return a.address;
      }
    }
  }
  return "127.0.0.1";
}

function address(name: string, value: string, portZeroOk: boolean): string {
  const colon = value.lastIndexOf(":");
  const port = Number(value.slice(colon + 1));
  const portText = value.slice(colon + 1);
  if (colon <= 0 || !/^\d{1,5}$/.test(portText) || port > 65535 || (!portZeroOk && port === 0)) {
    throw new SettingsError(
      `${name}=${JSON.stringify(value)} is not a host:port address (for example 127.0.0.1:50060)`,
    );
  }
  return value;
}

function dialable(name: string, value: string): string {
  address(name, value, false);
  if (/^(0\.0\.0\.0|\[?::\]?):/.test(value)) {
    throw new SettingsError(
      `${name}=${JSON.stringify(value)} is a wildcard address; give one others can dial`,
    );
  }
  return value;
}

/**
 * A peer's gRPC target (docs/targets.md), checked as the node client checks its own; a plain
 * `host:port` must also be one others can dial (not a wildcard).
 */
function target(name: string, value: string): string {
  const problem = targetProblem(value);
  if (problem !== undefined) {
    throw new SettingsError(`${name}=${JSON.stringify(value)} ${problem}`);
  }
  return value.startsWith("dns:") || value.startsWith("ipv4:") ? value : dialable(name, value);
}

function number(
  name: string,
  raw: string | undefined,
  fallback: number,
  min: number,
  integer = false,
): number {
  if (raw === undefined) {
    return fallback;
  }
  const value = Number(raw);
  if (!Number.isFinite(value) || value < min || (integer && !Number.isSafeInteger(value))) {
    const kind = integer ? "a whole number" : "a number";
    throw new SettingsError(`${name}=${JSON.stringify(raw)} must be ${kind} of at least ${min}`);
  }
  return value;
}
