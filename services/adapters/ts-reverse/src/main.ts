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
 * DAGWIRE_LOG_LEVEL; TLS and tokens as docs/security.md says: DAGWIRE_TLS_CERT/_KEY (serve TLS
 * only), DAGWIRE_TLS_CLIENT_CA (mTLS), DAGWIRE_HEALTH_ADDR (plaintext health alone),
 * DAGWIRE_TLS_CA, DAGWIRE_TLS_CLIENT_CERT/_KEY, DAGWIRE_TLS_SERVER_NAME (its channels to the
 * dispatcher and the store), DAGWIRE_TOKEN or DAGWIRE_TOKEN_FILE (sent on those channels).
 */

import { randomUUID } from "node:crypto";

import { type ChannelOptions, Server, ServerCredentials } from "@grpc/grpc-js";
import {
  bearerInterceptor,
  channelCredentials,
  checkTlsFiles,
  dialsTls,
  RotatingServerCredentials,
  servesTls,
  tlsChannelOptions,
  tlsFromEnv,
  type TlsSettings,
  TlsSettingsError,
  tokenFromEnv,
} from "@dagwire/node-client/security";
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

function bind(server: Server, address: string, creds: ServerCredentials): Promise<number> {
  return new Promise((resolve, reject) => {
    server.bindAsync(address, creds, (err, port) => (err ? reject(err) : resolve(port)));
  });
}

async function main(): Promise<number> {
  let settings: Settings;
  let tls: TlsSettings;
  let token: string | undefined;
  let creds: ServerCredentials;
  try {
    settings = loadSettings();
    // TLS and the token: read and checked before anything serves (docs/security.md).
    tls = tlsFromEnv();
    checkTlsFiles(tls);
    token = tokenFromEnv();
    creds = servesTls(tls)
      ? new RotatingServerCredentials(
          tls,
          (m) => log.warning(m),
          (m) => log.info(m),
        )
      : ServerCredentials.createInsecure();
  } catch (err) {
    if (err instanceof SettingsError || err instanceof TlsSettingsError) {
      process.stderr.write(`ts-reverse: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  const options = channelOptions(settings);
  const interceptors = token === undefined ? [] : [bearerInterceptor(token)];
  /** A new channel to a peer: TLS files read now, the token on every call. */
  const connect = (
    target: string,
  ): { credentials: ReturnType<typeof channelCredentials>; options: ChannelOptions } => ({
    credentials: channelCredentials(tls),
    options: { ...options, ...tlsChannelOptions(tls, target), interceptors },
  });
  const stores = new Stores(settings.storeAddr, connect);
  const servicer = new ReverseServicer(stores, settings.capacity);
  const health = new HealthImplementation({ "": "SERVING", [SERVICE_NAME]: "SERVING" });
  const server = new Server(serverOptions(settings));
  server.addService(AgentAdapterServiceService, servicer.handlers());
  health.addToServer(server);

  let port: number;
  try {
    port = await bind(server, settings.listenAddr, creds);
  } catch (err) {
    log.error(
      `cannot listen on ${settings.listenAddr}: ${(err as Error).message}; ` +
        "set DAGWIRE_LISTEN_ADDR to a free host:port (port 0 picks one)",
    );
    stores.close();
    return 1;
  }
  // DAGWIRE_HEALTH_ADDR: the same statuses in plaintext, and nothing else, for probes.
  let healthOnly: Server | undefined;
  if (tls.healthAddr !== undefined) {
    healthOnly = new Server(serverOptions(settings));
    health.addToServer(healthOnly);
    try {
      const healthPort = await bind(healthOnly, tls.healthAddr, ServerCredentials.createInsecure());
      log.info(`health alone, in plaintext, on ${tls.healthAddr.replace(/:0$/, `:${healthPort}`)}`);
    } catch (err) {
      log.error(`cannot listen on ${tls.healthAddr} (DAGWIRE_HEALTH_ADDR): ${(err as Error).message}`);
      server.forceShutdown();
      stores.close();
      return 1;
    }
  }
  const address = advertisedAddress(settings, port);
  const mode = tls.clientCa !== undefined ? "mTLS" : servesTls(tls) ? "TLS" : "plaintext";
  log.info(
    `adapter serving ${AGENT} on ${settings.listenAddr.replace(/:0$/, `:${port}`)} ` +
      `(advertised as ${address}, ${mode}), capacity ${settings.capacity}; dispatcher ${settings.dispatcherAddr}, ` +
      `store ${settings.storeAddr}, lease ${settings.leaseSeconds} s` +
      `${dialsTls(tls) ? ", dialling TLS" : ""}${token === undefined ? "" : ", sending a token"}`,
  );

  const dispatcher = connect(settings.dispatcherAddr);
  const registration = new Registration(
    settings.dispatcherAddr,
    { instanceId: randomUUID(), address, agents: [AGENT], capacity: settings.capacity },
    settings.leaseSeconds,
    dispatcher.options,
    dispatcher.credentials,
    dialsTls(tls),
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
  healthOnly?.forceShutdown();
  if (creds instanceof RotatingServerCredentials) {
    creds.close();
  }
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
