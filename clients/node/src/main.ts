#!/usr/bin/env node
/**
 * dagwire's client command in TypeScript.
 *
 *   node clients/node/dist/main.js run FILE [--var KEY=VALUE]... [--server HOST:PORT] [--token-file PATH]
 *   node clients/node/dist/main.js blob-sha256 --size N [--seed S]
 *
 * TLS and the bearer token come from DAGWIRE_TLS_* and DAGWIRE_TOKEN / DAGWIRE_TOKEN_FILE
 * (docs/security.md). Progress and errors go to stderr, results to stdout. Exit status: 0
 * success, 1 the run failed or was cancelled, 2 bad input (a TLS or token file included), 3 a
 * server unreachable, 4 the server refused the credentials (UNAUTHENTICATED, PERMISSION_DENIED).
 */

import { parseArgs } from "node:util";

import { blobSha256 } from "./blob";
import { orchestratorAddress } from "./config";
import { CliError, ExitCode } from "./errors";
import { runCommand } from "./run";

const USAGE = `usage:
  main.js run FILE [--var KEY=VALUE]... [--server HOST:PORT] [--token-file PATH]
      Start the workflow in FILE (YAML or JSON), follow it (one line per event on stderr)
      and print its summary as JSON on stdout. --server defaults to
      DAGWIRE_ORCHESTRATOR_ADDR, else 127.0.0.1:50051. The bearer token is read from
      --token-file, else DAGWIRE_TOKEN, else the file DAGWIRE_TOKEN_FILE names.
      TLS: DAGWIRE_TLS_CA, DAGWIRE_TLS_CLIENT_CERT/_KEY, DAGWIRE_TLS_SERVER_NAME.
  main.js blob-sha256 --size N [--seed S]
      Print the sha256 of the toolbox \`blob\` agent's content of N bytes for seed S (default 0).`;

async function main(argv: string[]): Promise<ExitCode> {
  const [command, ...rest] = argv;
  switch (command) {
    case "run":
      return run(rest);
    case "blob-sha256":
      return blob(rest);
    case "-h":
    case "--help":
    case "help":
      process.stdout.write(`${USAGE}\n`);
      return ExitCode.OK;
    case undefined:
      throw new CliError(`a command is required\n${USAGE}`, ExitCode.BAD_INPUT);
    default:
      throw new CliError(`unknown command ${JSON.stringify(command)}\n${USAGE}`, ExitCode.BAD_INPUT);
  }
}

async function run(args: string[]): Promise<ExitCode> {
  const { values, positionals } = parse(args, {
    var: { type: "string", multiple: true },
    server: { type: "string" },
    "token-file": { type: "string" },
  });
  if (positionals.length !== 1) {
    throw new CliError(
      `run takes exactly one workflow spec file, got ${positionals.length}\n${USAGE}`,
      ExitCode.BAD_INPUT,
    );
  }
  const userVars: Record<string, string> = {};
  for (const pair of (values.var as string[] | undefined) ?? []) {
    const eq = pair.indexOf("=");
    if (eq <= 0) {
      throw new CliError(
        `--var ${JSON.stringify(pair)} is not KEY=VALUE (for example --var topic=gRPC)`,
        ExitCode.BAD_INPUT,
      );
    }
    userVars[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return runCommand({
    specPath: positionals[0] as string,
    userVars,
    server: orchestratorAddress(values.server as string | undefined),
    tokenFile: values["token-file"] as string | undefined,
  });
}

function blob(args: string[]): ExitCode {
  const { values, positionals } = parse(args, {
    size: { type: "string" },
    seed: { type: "string", default: "0" },
  });
  if (positionals.length > 0) {
    throw new CliError(`blob-sha256 takes no file, got ${positionals.join(" ")}`, ExitCode.BAD_INPUT);
  }
  const sizeText = values.size as string | undefined;
  if (sizeText === undefined) {
    throw new CliError("blob-sha256 needs --size N (bytes)", ExitCode.BAD_INPUT);
  }
  const size = Number(sizeText);
  if (!/^\d+$/.test(sizeText) || !Number.isSafeInteger(size)) {
    throw new CliError(
      `--size ${JSON.stringify(sizeText)} is not a whole number of bytes`,
      ExitCode.BAD_INPUT,
    );
  }
  const seedText = values.seed as string;
  if (!/^-?\d+$/.test(seedText)) {
    throw new CliError(`--seed ${JSON.stringify(seedText)} is not an integer`, ExitCode.BAD_INPUT);
  }
  // Base-10 spelling of the integer, as the blob agent writes it ("007" is 7, "-0" is 0).
  process.stdout.write(`${blobSha256(size, BigInt(seedText).toString())}\n`);
  return ExitCode.OK;
}

type Options = NonNullable<Parameters<typeof parseArgs>[0]>["options"];

function parse(args: string[], options: Options): ReturnType<typeof parseArgs> {
  // `--seed -5`: join a value-taking option with its value, which may start with a dash.
  const joined: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i] as string;
    const next = args[i + 1];
    if (arg.startsWith("--") && options?.[arg.slice(2)]?.type === "string" && next !== undefined) {
      joined.push(`${arg}=${next}`);
      i++;
    } else {
      joined.push(arg);
    }
  }
  try {
    return parseArgs({ args: joined, options, allowPositionals: true, strict: true });
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new CliError(`${reason}\n${USAGE}`, ExitCode.BAD_INPUT);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof CliError) {
      process.stderr.write(`error: ${err.message}\n`);
      process.exitCode = err.code;
    } else {
      const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
      process.stderr.write(`internal error (please report it): ${text}\n`);
      process.exitCode = 70;
    }
  },
);
