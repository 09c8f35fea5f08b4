/**
 * TLS, mTLS and bearer tokens for every dagwire process written in TypeScript: the node client
 * and the adapters (`@dagwire/node-client/security`). They follow docs/security.md, as the
 * Python side does: the settings are environment variables only (`DAGWIRE_TLS_*`,
 * `DAGWIRE_HEALTH_ADDR`, `DAGWIRE_TOKEN`, `DAGWIRE_TOKEN_FILE`), so that a process's server and
 * all of its client channels agree.
 *
 * - A server with `DAGWIRE_TLS_CERT`/`DAGWIRE_TLS_KEY` serves TLS only; with
 *   `DAGWIRE_TLS_CLIENT_CA` it requires client certificates signed by that CA. Its files are
 *   checked every second (one `stat` each) and read again when they changed: grpc-js has no
 *   hook before each handshake, so a rotation is picked up within a second, not at the very
 *   next connection as in Go and Python.
 * - A client dials TLS when `DAGWIRE_TLS_CA` or `DAGWIRE_TLS_CLIENT_CERT` is set; its identity
 *   is the client certificate, else the process's own server certificate.
 * - A missing, unreadable or invalid file is a `TlsSettingsError` naming the setting and path.
 */

import { X509Certificate, createPrivateKey, type KeyObject } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { createSecureContext, type SecureContextOptions } from "node:tls";

import {
  type ChannelCredentials,
  type ChannelOptions,
  credentials,
  InterceptingCall,
  type Interceptor,
  ServerCredentials,
} from "@grpc/grpc-js";

/*
 * grpc-js passes the host dialled as the TLS server name, an IP address included, and Node
 * then warns once (DEP0123: SNI must not be an IP) on stderr, outside the one-line output and
 * the JSON logs. The name is still checked against the certificate's IP SANs: drop the warning.
 */
const emitWarning = process.emitWarning.bind(process);
process.emitWarning = ((warning: string | Error, ...rest: unknown[]): void => {
  const [kind, code] = rest;
  const named = typeof kind === "object" && kind !== null ? (kind as { code?: string }).code : code;
  if (named === "DEP0123") {
    return;
  }
  (emitWarning as (...args: unknown[]) => void)(warning, ...rest);
}) as typeof process.emitWarning;

/** A TLS or token setting that cannot be used: one line naming the setting and the path. */
export class TlsSettingsError extends Error {
  override name = "TlsSettingsError";
}

/** The TLS settings of one process; an undefined field is unset (all unset: plaintext). */
export interface TlsSettings {
  /** `DAGWIRE_TLS_CERT`: the server's certificate chain (PEM); also its client identity. */
  cert?: string | undefined;
  /** `DAGWIRE_TLS_KEY`: its private key (PEM, PKCS#8). */
  key?: string | undefined;
  /** `DAGWIRE_TLS_CLIENT_CA`: on a server, require client certificates this CA signed. */
  clientCa?: string | undefined;
  /** `DAGWIRE_TLS_CA`: on a client, the CA trusted for servers. */
  ca?: string | undefined;
  /** `DAGWIRE_TLS_SERVER_NAME`: the name checked for `dns:` and `ipv4:` targets. */
  serverName?: string | undefined;
  /** `DAGWIRE_TLS_CLIENT_CERT` / `DAGWIRE_TLS_CLIENT_KEY`: a client's own identity. */
  clientCert?: string | undefined;
  clientKey?: string | undefined;
  /** `DAGWIRE_HEALTH_ADDR`: a plaintext host:port serving grpc.health.v1 alone. */
  healthAddr?: string | undefined;
}

function get(env: NodeJS.ProcessEnv, name: string): string | undefined {
  const value = env[name]?.trim();
  return value === undefined || value === "" ? undefined : value;
}

/** The `DAGWIRE_TLS_*` settings of `env`, checked for how they fit together. */
export function tlsFromEnv(env: NodeJS.ProcessEnv = process.env): TlsSettings {
  const settings: TlsSettings = {
    cert: get(env, "DAGWIRE_TLS_CERT"),
    key: get(env, "DAGWIRE_TLS_KEY"),
    clientCa: get(env, "DAGWIRE_TLS_CLIENT_CA"),
    ca: get(env, "DAGWIRE_TLS_CA"),
    serverName: get(env, "DAGWIRE_TLS_SERVER_NAME"),
    clientCert: get(env, "DAGWIRE_TLS_CLIENT_CERT"),
    clientKey: get(env, "DAGWIRE_TLS_CLIENT_KEY"),
    healthAddr: get(env, "DAGWIRE_HEALTH_ADDR"),
  };
  pair(settings.cert, "DAGWIRE_TLS_CERT", settings.key, "DAGWIRE_TLS_KEY");
  pair(settings.clientCert, "DAGWIRE_TLS_CLIENT_CERT", settings.clientKey, "DAGWIRE_TLS_CLIENT_KEY");
  if (settings.clientCa !== undefined && settings.cert === undefined) {
    throw new TlsSettingsError(
      "DAGWIRE_TLS_CLIENT_CA is set but DAGWIRE_TLS_CERT and DAGWIRE_TLS_KEY are not: " +
        "a server checks client certificates only when it serves TLS",
    );
  }
  if (
    settings.healthAddr !== undefined &&
    !/^(\[[0-9A-Fa-f:.]+\]|[^:\s]*):\d{1,5}$/.test(settings.healthAddr)
  ) {
    throw new TlsSettingsError(
      `invalid DAGWIRE_HEALTH_ADDR=${JSON.stringify(settings.healthAddr)}: want host:port, for example 0.0.0.0:8081`,
    );
  }
  return settings;
}

function pair(
  first: string | undefined,
  firstName: string,
  second: string | undefined,
  secondName: string,
): void {
  if ((first === undefined) !== (second === undefined)) {
    const [given, missing] = first !== undefined ? [firstName, secondName] : [secondName, firstName];
    throw new TlsSettingsError(`${given} is set but ${missing} is not: set both or neither`);
  }
}

/** Whether a server of this process serves TLS (only). */
export function servesTls(settings: TlsSettings): boolean {
  return settings.cert !== undefined;
}

/** Whether this process's client channels use TLS. */
export function dialsTls(settings: TlsSettings): boolean {
  return settings.ca !== undefined || settings.clientCert !== undefined;
}

/**
 * Credentials of a new client channel, from the files as they are now (plaintext when the
 * settings do not ask for TLS). A channel made after a rotation uses the new files; an open
 * one keeps its credentials.
 */
export function channelCredentials(settings: TlsSettings): ChannelCredentials {
  if (!dialsTls(settings)) {
    return credentials.createInsecure();
  }
  const roots = settings.ca === undefined ? null : readCertificates(settings.ca, "DAGWIRE_TLS_CA");
  const identity =
    settings.clientCert !== undefined && settings.clientKey !== undefined
      ? readIdentity(
          settings.clientCert,
          "DAGWIRE_TLS_CLIENT_CERT",
          settings.clientKey,
          "DAGWIRE_TLS_CLIENT_KEY",
        )
      : settings.cert !== undefined && settings.key !== undefined
        ? readIdentity(settings.cert, "DAGWIRE_TLS_CERT", settings.key, "DAGWIRE_TLS_KEY")
        : null;
  return credentials.createSsl(roots, identity?.key ?? null, identity?.chain ?? null);
}

/** Channel options for TLS to `target`: the server name override for `dns:`/`ipv4:` targets. */
export function tlsChannelOptions(settings: TlsSettings, target: string): ChannelOptions {
  if (dialsTls(settings) && settings.serverName !== undefined && /^(dns|ipv4|ipv6):/.test(target)) {
    return { "grpc.ssl_target_name_override": settings.serverName };
  }
  return {};
}

/**
 * The bearer token a client sends: the content of `tokenFile` (a CLI's `--token-file`) when
 * given, else `DAGWIRE_TOKEN`, else the content of the file `DAGWIRE_TOKEN_FILE` names; undefined
 * when none is set. Trailing whitespace and newlines of a file are dropped.
 */
export function tokenFromEnv(env: NodeJS.ProcessEnv = process.env, tokenFile?: string): string | undefined {
  if (tokenFile !== undefined) {
    return readToken(tokenFile, "--token-file");
  }
  const token = get(env, "DAGWIRE_TOKEN");
  if (token !== undefined) {
    return token;
  }
  const path = get(env, "DAGWIRE_TOKEN_FILE");
  return path === undefined ? undefined : readToken(path, "DAGWIRE_TOKEN_FILE");
}

function readToken(path: string, setting: string): string {
  const token = read(path, setting).toString("utf8").replace(/\s+$/, "");
  if (token === "") {
    throw new TlsSettingsError(`invalid ${setting}='${path}': the file is empty`);
  }
  if (/[\r\n]/.test(token)) {
    throw new TlsSettingsError(`invalid ${setting}='${path}': the token must be one line`);
  }
  return token;
}

/**
 * An interceptor sending `authorization: Bearer <token>` with every call, except a call whose
 * own metadata already carries `authorization`: an adapter's store calls for one attempt send
 * the attempt's store grant that way (docs/security.md, "Store grants").
 */
export function bearerInterceptor(token: string): Interceptor {
  return (options, nextCall) =>
    new InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        if (metadata.get("authorization").length === 0) {
          metadata.set("authorization", `Bearer ${token}`);
        }
        next(metadata, listener);
      },
    });
}

/** How a client dials: credentials, and options to add to the channel's (interceptors too). */
export interface Connection {
  credentials: ChannelCredentials;
  options: ChannelOptions & { interceptors?: Interceptor[] };
  tls: boolean;
}

/** The credentials and options of a new channel to `target`, from the environment. */
export function connection(
  target: string,
  env: NodeJS.ProcessEnv = process.env,
  tokenFile?: string,
): Connection {
  const settings = tlsFromEnv(env);
  const token = tokenFromEnv(env, tokenFile);
  return {
    credentials: channelCredentials(settings),
    options: {
      ...tlsChannelOptions(settings, target),
      ...(token === undefined ? {} : { interceptors: [bearerInterceptor(token)] }),
    },
    tls: dialsTls(settings),
  };
}

/** How often a TLS server checks whether its files changed. */
export const ROTATION_CHECK_MS = 1_000;

/** Where a server's warnings go (the adapter passes its logger). */
export type Warn = (message: string) => void;

/**
 * Server credentials that serve the files as they are now and follow their rotation: every
 * `ROTATION_CHECK_MS` the files are `stat`ed, and when one changed they are read again and,
 * if they load (a key that fits its certificate), used for new connections. Files that
 * changed but do not load yet keep the previous ones in use (logged through `warn`).
 */
export class RotatingServerCredentials extends ServerCredentials {
  private seen: string;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly settings: TlsSettings,
    private readonly warn: Warn,
    private readonly info: Warn = () => undefined,
  ) {
    const mutual = settings.clientCa !== undefined;
    super({ requestCert: mutual, rejectUnauthorized: mutual }, serverContext(settings));
    this.seen = signature(settings);
    this.timer = setInterval(() => this.check(), ROTATION_CHECK_MS);
    this.timer.unref();
  }

  /** Stop watching the files. */
  close(): void {
    clearInterval(this.timer);
  }

  _equals(other: ServerCredentials): boolean {
    return other === this;
  }

  private check(): void {
    const now = signature(this.settings);
    if (now === this.seen) {
      return;
    }
    this.seen = now;
    let options: SecureContextOptions;
    try {
      options = serverContext(this.settings);
      createSecureContext(options); // what grpc-js will do; a failure there drops every connection
    } catch (err) {
      this.warn(`TLS certificate files changed but cannot be used yet: ${(err as Error).message}`);
      return;
    }
    this.updateSecureContextOptions(options);
    this.info(`TLS certificate files changed: new connections use them (${this.settings.cert})`);
  }
}

/** The secure context of a server: its identity, and the client CA under mTLS. */
function serverContext(settings: TlsSettings): SecureContextOptions {
  if (settings.cert === undefined || settings.key === undefined) {
    throw new TlsSettingsError("DAGWIRE_TLS_CERT and DAGWIRE_TLS_KEY are not set");
  }
  const identity = readIdentity(settings.cert, "DAGWIRE_TLS_CERT", settings.key, "DAGWIRE_TLS_KEY");
  const options: SecureContextOptions = { cert: identity.chain, key: identity.key };
  if (settings.clientCa !== undefined) {
    options.ca = readCertificates(settings.clientCa, "DAGWIRE_TLS_CLIENT_CA");
  }
  return options;
}

/** What changes when a file is rewritten or replaced: inode, size and mtime of each. */
function signature(settings: TlsSettings): string {
  return [settings.cert, settings.key, settings.clientCa]
    .map((path) => {
      if (path === undefined) {
        return "-";
      }
      try {
        const st = statSync(path, { bigint: true });
        return `${st.ino}/${st.size}/${st.mtimeNs}`;
      } catch {
        return "missing";
      }
    })
    .join(",");
}

/** Read and check every file the settings name, as a process does at start-up. */
export function checkTlsFiles(settings: TlsSettings): void {
  if (servesTls(settings)) {
    serverContext(settings);
  }
  channelCredentials(settings);
}

function read(path: string, setting: string): Buffer {
  try {
    return readFileSync(path);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reasons: Record<string, string> = {
      ENOENT: "No such file or directory",
      EACCES: "Permission denied",
      EISDIR: "Is a directory",
    };
    const reason = (code !== undefined ? reasons[code] : undefined) ?? (err as Error).message;
    throw new TlsSettingsError(`cannot read ${setting}='${path}': ${reason}`);
  }
}

function readCertificates(path: string, setting: string): Buffer {
  const data = read(path, setting);
  try {
    new X509Certificate(data);
  } catch {
    throw new TlsSettingsError(
      `invalid ${setting}='${path}': not a PEM certificate (-----BEGIN CERTIFICATE-----)`,
    );
  }
  return data;
}

function readIdentity(
  certPath: string,
  certSetting: string,
  keyPath: string,
  keySetting: string,
): { chain: Buffer; key: Buffer } {
  const chain = readCertificates(certPath, certSetting);
  const keyData = read(keyPath, keySetting);
  const text = keyData.toString("latin1");
  if (text.includes("ENCRYPTED")) {
    throw new TlsSettingsError(`invalid ${keySetting}='${keyPath}': it is encrypted`);
  }
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: keyData, format: "pem" });
  } catch {
    throw new TlsSettingsError(`invalid ${keySetting}='${keyPath}': not a PEM private key`);
  }
  if (!new X509Certificate(chain).checkPrivateKey(key)) {
    throw new TlsSettingsError(
      `invalid ${keySetting}='${keyPath}': it is not the key of the certificate in ${certSetting}='${certPath}'`,
    );
  }
  return { chain, key: keyData };
}

/**
 * What a failed connection's details mean in TLS terms, naming the setting to look at, or
 * undefined when they are not about TLS. `tls` is whether the client dialled TLS.
 */
export function explainConnectFailure(details: string, tls: boolean): string | undefined {
  const lowered = details.toLowerCase();
  if (
    /unable to verify the first certificate|unable to get (local )?issuer|self[- ]signed certificate/.test(
      lowered,
    )
  ) {
    return "TLS: the server's certificate is not signed by the CA this client trusts (DAGWIRE_TLS_CA)";
  }
  if (
    lowered.includes("does not match certificate's altnames") ||
    lowered.includes("hostname/ip does not match")
  ) {
    return "TLS: the server's certificate does not carry the name dialled (set DAGWIRE_TLS_SERVER_NAME to a name it carries)";
  }
  if (/wrong version number|packet length too long|before secure tls connection/.test(lowered)) {
    return "TLS handshake failed (does the server serve TLS?)";
  }
  if (/certificate required|bad certificate|unknown ca|alert/.test(lowered)) {
    return (
      "the server refused this client's TLS connection; it may require a client certificate " +
      "(DAGWIRE_TLS_CLIENT_CERT) signed by its client CA"
    );
  }
  // A connection made and then closed (grpc-js: "Failed to connect"), as a TLS server does to
  // a plaintext client and an mTLS server to a client without a certificate it accepts.
  if (
    /econnreset|epipe|socket hang up|connection dropped|protocol error|closed|goaway|failed to connect/.test(
      lowered,
    )
  ) {
    return tls
      ? "the server closed the connection during the TLS handshake; it may require a client certificate " +
          "(DAGWIRE_TLS_CLIENT_CERT) signed by its client CA"
      : "the server closed the connection; if it serves TLS, set DAGWIRE_TLS_CA to its CA";
  }
  return undefined;
}
