/**
 * Logging to stderr (stdout stays free): JSON lines by default, readable text on a terminal,
 * chosen by `DAGWIRE_LOG_FORMAT` (json | text). `DAGWIRE_LOG_LEVEL` (debug | info | warning |
 * error) filters. Every line carries `service`, and the call's `trace_id`, `run_id`,
 * `node_id` and `attempt` when it has them.
 */

const LEVELS = { debug: 10, info: 20, warning: 30, error: 40 } as const;
type Level = keyof typeof LEVELS;

/** Fields bound to one line, e.g. the trace id of the call it is about. */
export type Fields = Record<string, string | number | undefined>;

const format = (process.env.DAGWIRE_LOG_FORMAT ?? (process.stderr.isTTY ? "text" : "json")).toLowerCase();
const threshold = LEVELS[(process.env.DAGWIRE_LOG_LEVEL ?? "info").toLowerCase() as Level] ?? LEVELS.info;

function write(level: Level, message: string, fields: Fields): void {
  if (LEVELS[level] < threshold) {
    return;
  }
  const time = new Date().toISOString();
  const bound = Object.fromEntries(Object.entries(fields).filter(([, v]) => v !== undefined && v !== ""));
  if (format === "text") {
    const extra = Object.entries(bound)
      .map(([k, v]) => `${k}=${v}`)
      .join(" ");
    process.stderr.write(
      `${time.slice(11, 23)} ${level.toUpperCase().padEnd(7)} [ts-reverse] ${message}${extra ? ` ${extra}` : ""}\n`,
    );
  } else {
    process.stderr.write(`${JSON.stringify({ time, level, service: "ts-reverse", message, ...bound })}\n`);
  }
}

export const log = {
  debug: (message: string, fields: Fields = {}): void => write("debug", message, fields),
  info: (message: string, fields: Fields = {}): void => write("info", message, fields),
  warning: (message: string, fields: Fields = {}): void => write("warning", message, fields),
  error: (message: string, fields: Fields = {}): void => write("error", message, fields),
};
