import { pino, type Logger } from 'pino';

/**
 * Structured logs on stdout. Call sites log decisions and identifiers only: never request bodies,
 * images, embeddings, API keys or capture tokens (request lines carry the path without its query).
 */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: 'authface' },
    redact: { paths: ['*.authorization', '*.headers', '*.token', '*.apiKey', '*.api_key', '*.embedding'], censor: '[redacted]' },
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
