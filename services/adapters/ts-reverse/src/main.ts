#!/usr/bin/env node
/**
 * The ts-reverse adapter process: serves the `reverse` agent over
 * `dagwire.v1.AgentAdapterService` and `grpc.health.v1.Health`, registers with the dispatcher
 * and heartbeats; on SIGTERM or SIGINT it deregisters, drains in-flight calls within the grace
 * period and exits 0.
 *
 *   DAGWIRE_LISTEN_ADDR=127.0.0.1:0 DAGWIRE_DISPATCHER_ADDR=127.0.0.1:50052 \
 *     node services/adapters/ts-reverse/dist/main.js
 *
 * Settings (environment): DAGWIRE_LISTEN_ADDR (127.0.0.1:50060; port 0 picks a free one),
 * DAGWIRE_ADVERTISE_ADDR, DAGWIRE_DISPATCHER_ADDR, DAGWIRE_STORE_ADDR, DAGWIRE_LEASE_SECONDS,
 * DAGWIRE_MAX_MESSAGE_BYTES, DAGWIRE_GRACE_SECONDS, DAGWIRE_CAPACITY, DAGWIRE_LOG_FORMAT,
 * DAGWIRE_LOG_LEVEL.
 */

import { randomUUID } from "node:crypto";

import { type ChannelOptions, Server, ServerCredentials } from "@grpc/grpc-js";
import { serviceConfig } from "@dagwire/node-client/targets";
import { HealthImplementation } from "grpc-health-check";

import { AgentAdapterServiceService } from "./gen/dagwire/v1/adapter_service";
import { log } from "./log";
import { Registration } from "./registration";
import { AGENT, ReverseServicer } from "./servicer";
import { advertisedAddress, loadSettings, type Settings, SettingsError } from "./settings";
import { Stores } from "./store";

/** "dagwire.v1.AgentAdapterService", from the generated method path. */
const SERVICE_NAME =
  AgentAdapterServiceService.execute.path.split("/")[1] ?? "dagwire.v1.AgentAdapterService";

/** The server's options: message limits and keepalive. */
function serverOptions(settings: Settings): ChannelOptions {
  return {
    "grpc.max_send_message_length": settings.maxMessageBytes,
    "grpc.max_receive_message_length": settings.maxMessageBytes,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 1,
  };
}

/** Calls to the dispatcher and the store that are safe to repeat (docs/targets.md). */
const SAFE_METHODS: Record<string, string[]> = {
  "dagwire.v1.DispatcherService": ["ListAdapters", "RegisterAdapter", "Heartbeat", "DeregisterAdapter"],
  "dagwire.v1.ArtifactStoreService": ["GetArtifact", "StatArtifact", "ListArtifacts"],
};

/**
 * Options of the channels to the dispatcher and the stores: the server's, plus round-robin over
 * every address a target resolves to and retries on UNAVAILABLE of the safe calls only; ours,
 * not a service config from DNS.
 */
function channelOptions(settings: Settings): ChannelOptions {
  return {
    ...serverOptions(settings),
    "grpc.service_config": serviceConfig(SAFE_METHODS),
    "grpc.service_config_disable_resolution": 1,
  };
}

function bind(server: Server, address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, ServerCredentials.createInsecure(), (err, port) =>
      err ? reject(err) : resolve(port),
    );
  });
}

async function main(): Promise<number> {
  let settings: Settings;
  try {
    settings = loadSettings();
  } catch (err) {
    if (err instanceof SettingsError) {
      process.stderr.write(`ts-reverse: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const options = channelOptions(settings);
  const stores = new Stores(settings.storeAddr, options);
  const servicer = new ReverseServicer(stores, settings.capacity);
  const health = new HealthImplementation({ "": "SERVING", [SERVICE_NAME]: "SERVING" });
  const server = new Server(serverOptions(settings));
  server.addService(AgentAdapterServiceService, servicer.handlers());
  health.addToServer(server);

  let port: number;
  try {
    port = await bind(server, settings.listenAddr);
  } catch (err) {
    log.error(
      `cannot listen on ${settings.listenAddr}: ${(err as Error).message}; ` +
        "set DAGWIRE_LISTEN_ADDR to a free host:port (port 0 picks one)",
    );
    stores.close();
    return 1;
  }
  const address = advertisedAddress(settings, port);
  log.info(
    `adapter serving ${AGENT} on ${settings.listenAddr.replace(/:0$/, `:${port}`)} ` +
      `(advertised as ${address}), capacity ${settings.capacity}; dispatcher ${settings.dispatcherAddr}, ` +
      `store ${settings.storeAddr}, lease ${settings.leaseSeconds} s`,
  );

  const registration = new Registration(
    settings.dispatcherAddr,
    { instanceId: randomUUID(), address, agents: [AGENT], capacity: settings.capacity },
    settings.leaseSeconds,
    options,
  );
  registration.start();

  const signal = await new Promise<NodeJS.Signals>((resolve) => {
    process.once("SIGTERM", () => resolve("SIGTERM"));
    process.once("SIGINT", () => resolve("SIGINT"));
  });
  log.info(`${signal}: deregistering, then draining in-flight calls for up to ${settings.graceSeconds} s`);
  // A second signal stops at once.
  const force = (): void => server.forceShutdown();
  process.once("SIGTERM", force);
  process.once("SIGINT", force);

  health.setStatus("", "NOT_SERVING");
  health.setStatus(SERVICE_NAME, "NOT_SERVING");
  await registration.stop();
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      log.warning(
        `${servicer.inFlight} call(s) still running after ${settings.graceSeconds} s: cancelling them`,
      );
      server.forceShutdown();
      resolve();
    }, settings.graceSeconds * 1000);
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
  stores.close();
  log.info("stopped");
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log.error(`ts-reverse crashed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(1);
  },
);
