import { Writable } from 'node:stream';
import { pino, type Logger } from 'pino';

/**
 * Structured logs on stdout: JSON lines for journald and log shippers, or readable lines when a
 * person watches a terminal. Call sites log decisions and identifiers only: never request
 * bodies, images, embeddings, API keys or capture tokens (request lines carry the route, never
 * the query where capture tokens live).
 */
export function createLogger(level: string, options: { pretty?: boolean } = { pretty: process.stdout.isTTY === true }): Logger {
  const settings = {
    level,
    base: { service: 'authface' },
    redact: { paths: ['*.authorization', '*.headers', '*.token', '*.apiKey', '*.api_key', '*.embedding'], censor: '[redacted]' },
  };
  return options.pretty ? pino(settings, readableLines(process.stdout)) : pino(settings);
}

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };

/** One pino JSON line as a person reads it: `14:05:09 WARN  mqtt error  url=mqtt://… problem="…"`. */
export function readableLine(json: string): string {
  let entry: Record<string, unknown>;
  try {
    entry = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const { level, time, msg, ...rest } = entry;
  const fields = Object.fromEntries(Object.entries(rest).filter(([k]) => !['service', 'pid', 'hostname'].includes(k)));
  const clock = new Date(Number(time)).toTimeString().slice(0, 8);
  const shown = Object.entries(fields).map(([k, v]) => {
    const text = typeof v === 'string' ? v : JSON.stringify(v);
    return `${k}=${/[\s"]/.test(text) ? JSON.stringify(text) : text}`;
  });
  return `${clock} ${(LEVELS[Number(level)] ?? String(level)).padEnd(5)} ${String(msg ?? '')}${shown.length ? `  ${shown.join(' ')}` : ''}`;
}

function readableLines(out: NodeJS.WritableStream): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line) out.write(`${readableLine(line)}\n`);
      done();
    },
  });
}

/**
 * An error as it may appear in a log: its name and where it happened, never its message (messages
 * from libraries may quote input, such as image metadata or a request field).
 */
export function loggableError(err: unknown): { name: string; stack?: string } {
  return err instanceof Error ? { name: err.name, stack: err.stack?.split('\n').slice(1, 8).join('\n') } : { name: typeof err };
}

export type { Logger };
